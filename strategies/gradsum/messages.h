// gradsum's messages besides the run request (strategies/run_message.h), typed: one encode and one
// decode each, the decode refusing a missing field by name (docs/protocol.md lists the fields).
//
//   gradsum.grad    worker -> coordinator (star)  one bucket of a replica's gradient for a step; the
//                                                 first bucket of a step carries its loss and examples
//   gradsum.update  coordinator -> worker (star)  the bucket summed (or the stepped parameters)
//   gradsum.check   worker -> coordinator         a replica's parameter checksum after a step
//   gradsum.done    worker -> coordinator         the end of a replica's round: its buffers; in a
//                                                 ring, its checksum, its timings and losses, and
//                                                 from rank 0 the parameters and optimiser state
#pragma once

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>

#include "core/kit/message.h"

namespace fedra::gradsum {

// gradsum.grad and gradsum.update: the pieces of one bucket for one step.
struct Bucket {
  uint64_t step = 0;
  size_t bucket = 0;
  NamedTensors pieces;
  // The step's loss and examples, on a replica's first bucket of a step.
  std::optional<std::pair<double, double>> loss;
  Message encode(const char* kind) const;
  // Refuses another kind or a bucket not below `buckets`, naming `who`.
  static Bucket decode(Message&& m, const char* kind, size_t buckets, const std::string& who);
};

// gradsum.check.
struct StepCheck {
  uint64_t step = 0;
  std::string checksum;
  Message encode() const;
  static StepCheck decode(const Message& m, const std::string& who);
};

// gradsum.done.
struct RoundDone {
  uint32_t round = 0;
  NamedTensors buffers;    // the replica's buffers (batch norm statistics), averaged upstream
  NamedTensors params;     // ring, rank 0: the parameters ("param/NAME" on the wire)
  NamedTensors opt_state;  // ring, rank 0: the optimiser's state ("opt/NAME")
  std::string checksum;    // ring: the parameters' checksum at the round's end
  double compute_ms = 0, wait_ms = 0, exchange_ms = 0, steps = 0;
  double loss_sum = 0, loss_examples = 0, first_loss = std::nan("");
  double ring_bytes_sent = 0, ring_bytes_received = 0;

  template <class F>
  void metrics(F&& f) {
    f("compute_ms", compute_ms);
    f("wait_ms", wait_ms);
    f("exchange_ms", exchange_ms);
    f("steps", steps, Field::kRequired);
    f("loss_sum", loss_sum);
    f("loss_examples", loss_examples);
    f("first_loss", first_loss);
    f("ring_bytes_sent", ring_bytes_sent);
    f("ring_bytes_received", ring_bytes_received);
  }
  Message encode() const;
  static RoundDone decode(Message&& m, const std::string& who);
};

}  // namespace fedra::gradsum
