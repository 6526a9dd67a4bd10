// Message: what strategies send and receive.
//
// A Message is the training-side view of one wire Envelope: a kind ("fedavg.fit"), the round and
// step it belongs to, named tensors, scalar metrics, string options and an optional error.
// Strategies build and read Messages; the runtime turns them into frames (to_envelope) and back
// (from_envelope) without copying tensor bytes:
//  - to_envelope references the memory of contiguous CPU tensors; the Envelope's storage keeps
//    those tensors alive until the frame is written. Non-contiguous tensors are made contiguous
//    first (one copy, owned the same way).
//  - from_envelope wraps each received tensor with torch::from_blob and a deleter that holds the
//    frame buffer, so a received model is used in place.
// Received tensors share one buffer; call .clone() on one to keep it past the others cheaply.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <exception>
#include <initializer_list>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "transport/codec.h"

namespace fedra {

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

struct Message {
  std::string kind;
  uint32_t round = 0;
  uint64_t step = 0;
  std::string sender;
  NamedTensors tensors;
  std::map<std::string, double> metrics;
  std::map<std::string, std::string> options;
  std::optional<transport::WireError> error;

  Message() = default;
  explicit Message(std::string message_kind, uint32_t message_round = 0)
      : kind(std::move(message_kind)), round(message_round) {}

  // Lookups throw Error naming the missing entry and the message kind.
  const at::Tensor& tensor(std::string_view name) const;
  double metric(std::string_view name) const;
  double metric_or(std::string_view name, double fallback) const;
  const std::string& option(std::string_view name) const;
  std::string option_or(std::string_view name, std::string fallback) const;

  // Checks of a typed message's decode, each throwing Error with the names involved:
  // expect_kind: "expected 'KIND' from WHO, got 'OTHER'";
  // require_options: "'KIND' lacks the option 'NAME'" for the first absent name.
  void expect_kind(std::string_view expected, std::string_view who) const;
  void require_options(std::initializer_list<std::string_view> names) const;
};

// The scalar fields of a typed message, carried as metrics, declared once by the struct:
//   template <class F> void metrics(F&& f) {
//     f("examples", examples, Field::kRequired);  // refused by name when absent
//     f("rtt_ms", rtt_ms);                        // optional: absent keeps the struct's default
//   }
// put_metrics writes them into a message; get_metrics reads them back, throwing
// "WHOSE 'KIND' lacks the metric 'NAME'" (whose: "worker-1's") for a required one that is absent.
enum class Field { kOptional, kRequired };

namespace detail {
struct MetricWriter {
  Message& m;
  template <class V>
  void operator()(const char* name, const V& value, Field = Field::kOptional) const {
    m.metrics[name] = static_cast<double>(value);
  }
};
// A metric as the field's type: finite, and for a count a whole number within the type's range
// (and 2^53, where a double stops holding every integer): 2.5 examples or 1e19 of an int64 are
// refused by name, not truncated or wrapped. An optional real field may be NaN, its "none"
// (gradsum's first_loss of a worker that took no step); a required one may not (a NaN train_loss).
template <class V>
V checked_metric(double x, std::string_view whose, const std::string& kind, const char* name, Field field) {
  const bool none = std::is_floating_point<V>::value && field == Field::kOptional && std::isnan(x);
  FEDRA_REQUIRE(std::isfinite(x) || none, "{} '{}' has the metric '{}' = {}, not a finite number", whose, kind,
                name, x);
  if constexpr (std::is_integral<V>::value) {
    const double lo = static_cast<double>(std::numeric_limits<V>::min());
    const double hi = std::min(static_cast<double>(std::numeric_limits<V>::max()), 9007199254740992.0);
    FEDRA_REQUIRE(x == std::floor(x) && x >= lo && x <= hi,
                  "{} '{}' has the metric '{}' = {}, not a whole number in [{}, {}]", whose, kind, name, x, lo, hi);
  }
  return static_cast<V>(x);
}

struct MetricReader {
  const Message& m;
  std::string_view whose;
  template <class V>
  void operator()(const char* name, V& value, Field field = Field::kOptional) const {
    const auto it = m.metrics.find(name);
    if (it != m.metrics.end()) {
      value = checked_metric<V>(it->second, whose, m.kind, name, field);
    } else {
      FEDRA_REQUIRE(field == Field::kOptional, "{} '{}' lacks the metric '{}'", whose, m.kind, name);
    }
  }
};
}  // namespace detail

template <class T>
void put_metrics(const T& fields, Message& m) {
  const_cast<T&>(fields).metrics(detail::MetricWriter{m});  // the writer only reads the fields
}
template <class T>
void get_metrics(T& fields, const Message& m, std::string_view whose) {
  fields.metrics(detail::MetricReader{m, whose});
}

// A typed reply in one call each way: `fields`' metrics and the tensors in `fields.*tensors`.
template <class T>
Message encode_reply(std::string kind, uint32_t round, const T& fields, NamedTensors T::*tensors) {
  Message m(std::move(kind), round);
  m.tensors = fields.*tensors;
  put_metrics(fields, m);
  return m;
}
// Refuses another kind (naming `worker`) or an absent required metric (naming `whose`).
template <class T>
T decode_reply(Message&& m, std::string_view kind, std::string_view worker, std::string_view whose,
               NamedTensors T::*tensors) {
  m.expect_kind(kind, worker);
  T fields;
  get_metrics(fields, m, whose);
  fields.*tensors = std::move(m.tensors);
  return fields;
}

// Moves the tensors whose names start with `prefix` out of `all` (order kept), the prefix
// dropped; and the reverse, appending `extra` under `prefix`. Messages carry state beside a
// model this way ("opt/NAME", SCAFFOLD's "scaffold.c/NAME").
NamedTensors take_prefixed(NamedTensors& all, std::string_view prefix);
void append_prefixed(NamedTensors& all, std::string_view prefix, const NamedTensors& extra);

// "float32[2,3]": dtype and shape, for error messages.
std::string describe_tensor(const at::Tensor& t);
// The reason in a LibTorch or TorchScript error, one line: a c10::Error's first line without its
// backtrace; the interpreter's last line (after its script traceback) without "RuntimeError: ".
std::string torch_error_reason(const std::exception& e);

c10::ScalarType to_scalar_type(transport::DType dtype);
transport::DType to_wire_dtype(c10::ScalarType type);

// Tensors must live on the CPU. The Envelope shares ownership of every tensor it references.
transport::Envelope to_envelope(const Message& message);
Message from_envelope(transport::Envelope&& envelope);

}  // namespace fedra
