// The asynchronous strategies' messages, typed (docs/protocol.md lists the fields):
//
//   async.session  coordinator -> worker  the one request of the run; it carries the first dispatch
//   async.train    coordinator -> worker  a later dispatch (a part of the session's exchange)
//   async.update   worker -> coordinator  what the client trained (a part)
//   async.stop     coordinator -> worker  the run is over (a part; option reason)
//   async.done     worker -> coordinator  the session's reply, empty
#pragma once

#include <cstdint>
#include <string>

#include "core/kit/message.h"

namespace fedra::async {

// async.session (with the first dispatch) or async.train: the model to train from and how.
struct Dispatch {
  uint32_t version = 0;  // the model's version (server updates so far), as the message's round
  NamedTensors weights;
  uint64_t seed = 1;
  // A fleet on the wall clock: sleep sleep_factor x the training time + net_s (core/federated/fleet.h;
  // the factor is the device's slowdown - 1, below 0 for a fast device).
  double sleep_factor = 0, net_s = 0;

  Message encode(const char* kind) const;
  static Dispatch decode(const Message& m);
};

// async.update: weights (fedasync) or the delta from the dispatched model (fedbuff).
struct Update {
  uint32_t version = 0;  // the version it was trained from
  NamedTensors tensors;
  double num_examples = 0, train_loss = 0, steps = 0, train_s = 0, slept_s = 0;

  template <class F>
  void metrics(F&& f) {
    f("num_examples", num_examples, Field::kRequired);
    f("train_loss", train_loss, Field::kRequired);
    f("steps", steps);
    f("train_s", train_s);
    f("slept_s", slept_s);
  }
  Message encode() const;
  // Refuses another kind or a missing field, naming `who`.
  static Update decode(Message&& m, const std::string& who);
};

}  // namespace fedra::async
