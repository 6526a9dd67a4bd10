// Runtime message kinds and the job handshake.
//
//   worker -> coordinator  "hello"    version, name (sender), options{token}, metrics{num_examples},
//                                     tensor label_histogram (int64 [classes]); never samples
//   coordinator -> worker  "welcome"  options{strategy, model, loss, seed, worker_id,
//                                     option.<name> for each strategy option}
//   coordinator -> worker  "shutdown" options{reason}: the job is over, exit
//   either way             "error"    error{kind, message}: the sender drops the connection
// Strategy messages are namespaced by strategy ("fedavg.fit", "fedavg.fit_result") and carry the
// request id of the runtime request they answer.
#pragma once

#include <cstdint>
#include <string>

#include "core/kit/message.h"
#include "core/kit/strategy.h"
#include "transport/codec.h"

namespace fedra::protocol {

inline constexpr const char* kHello = "hello";
inline constexpr const char* kWelcome = "welcome";
inline constexpr const char* kShutdown = "shutdown";
inline constexpr const char* kError = transport::kErrorKind;
inline constexpr const char* kCoordinatorName = "coordinator";

Message make_welcome(const Job& job, uint64_t worker_id);

// Constant-time comparison of secrets (the token, the peer key), so that the time taken does not
// tell how many bytes matched.
bool same_secret(const std::string& a, const std::string& b);
Job job_from_welcome(const Message& welcome);

}  // namespace fedra::protocol
