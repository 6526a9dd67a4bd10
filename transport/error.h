// Errors for every Fedra layer.
//
// Failures of logistics (a peer went away, a deadline passed, a frame was malformed, an option
// was wrong) are thrown as fedra::Error. Its kind tells the caller what it can do about it,
// modelled on kj::Exception::Type:
//   kFailed        the request cannot succeed as made (bad input, bad config, broken invariant);
//   kOverloaded    a deadline passed or a resource ran out; retrying later may work;
//   kDisconnected  the peer is gone; exclude it or reconnect;
//   kUnimplemented the peer does not know this message kind or feature.
// what() is written for the person running Fedra: it names what was wrong and, where it can,
// what to do. The throwing file and line are kept apart for debug logs.
//
// FEDRA_REQUIRE(cond, fmt, args...) checks a caller's input; FEDRA_ASSERT checks an internal
// invariant (its failure is a Fedra bug). Both format the message with fmt only on failure.
#pragma once

#include <stdexcept>
#include <string>

#include <fmt/format.h>

namespace fedra {

enum class ErrorKind { kFailed = 0, kOverloaded = 1, kDisconnected = 2, kUnimplemented = 3 };

const char* error_kind_name(ErrorKind kind);

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, std::string message, const char* file = "", int line = 0)
      : std::runtime_error(std::move(message)), kind_(kind), file_(file), line_(line) {}

  ErrorKind kind() const { return kind_; }
  const char* file() const { return file_; }
  int line() const { return line_; }

 private:
  ErrorKind kind_;
  const char* file_;
  int line_;
};

}  // namespace fedra

#define FEDRA_THROW(kind, ...) \
  throw ::fedra::Error((kind), ::fmt::format(__VA_ARGS__), __FILE__, __LINE__)

#define FEDRA_FAIL(...) FEDRA_THROW(::fedra::ErrorKind::kFailed, __VA_ARGS__)

#define FEDRA_REQUIRE(cond, ...)  \
  do {                            \
    if (!(cond)) {                \
      FEDRA_FAIL(__VA_ARGS__);    \
    }                             \
  } while (false)

#define FEDRA_ASSERT(cond, ...)                                                         \
  do {                                                                                  \
    if (!(cond)) {                                                                      \
      FEDRA_FAIL("internal error (a Fedra bug, please report): {}: " #cond,             \
                 ::fmt::format(__VA_ARGS__));                                           \
    }                                                                                   \
  } while (false)
