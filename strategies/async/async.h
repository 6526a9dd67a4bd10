// Asynchronous federated learning: FedAsync and FedBuff.
//
// No rounds: every client that finishes an update is handed the newest model at once (up to
// `concurrency` clients train at a time), so no device waits for a slower one.
//   fedasync (Xie et al. 2019, "Asynchronous Federated Optimization"): each update is mixed into
//            the global model as it arrives, x <- (1 - a_t) x + a_t w with a_t = mixing * s(tau).
//   fedbuff  (Nguyen et al. 2022, "Federated Learning with Buffered Asynchronous Aggregation"):
//            clients send their delta w - x_base; K = `buffer` of them, each scaled by s(tau), are
//            averaged into D = sum s(tau_i) delta_i / K, then a server step (any server optimiser of
//            the FedAvg family on the pseudo-gradient -D; with none, x <- x + server_lr D).
// tau, the staleness, is how many server updates the global model took while the client trained.
// s is constant (1), polynomial ((tau + 1)^-a) or hinge (1 for tau <= b, else 1 / (a (tau - b) + 1)).
// An update staler than max_staleness is refused and counted (updates_refused), never dropped
// silently. A client whose process dies loses only its own update (updates_lost); the others go on.
//
// Fleets (core/federated/fleet.h): with clock=virtual the coordinator runs a discrete-event simulation: each
// dispatch's duration (steps * step * slowdown + the model's transfer both ways) sets when its
// update "arrives", updates are applied in that order whatever order the real processes finish
// in, and a device that goes offline (churn) before it would finish loses that update. The
// metrics are then a function of the seed alone. With clock=wall the workers sleep the fleet's
// delays for real and updates are applied as they come.
//
// Wire: one exchange per client for the whole run. The instruction "async.session" carries the
// local training settings; the coordinator posts "async.train" (the model, its version as the
// round, a seed, and under the wall clock the delays to sleep); the worker answers each with a
// part "async.update" (weights for fedasync, the delta for fedbuff; num_examples, train_loss,
// steps, train_s); "async.stop" ends the session with the reply "async.done".
#pragma once

#include <cstdint>
#include <string>

#include "core/federated/fleet.h"
#include "core/federated/server_optimizer.h"
#include "core/kit/option_groups.h"
#include "core/kit/registry.h"

namespace fedra::async {

inline constexpr const char* kSession = "async.session";
inline constexpr const char* kTrain = "async.train";
inline constexpr const char* kUpdate = "async.update";
inline constexpr const char* kStop = "async.stop";
inline constexpr const char* kDone = "async.done";

enum class Mode { kFedAsync, kFedBuff };
enum class Staleness { kConstant, kPolynomial, kHinge };
FEDRA_ENUM_NAMES(Staleness, {Staleness::kConstant, "constant"}, {Staleness::kPolynomial, "polynomial"},
                 {Staleness::kHinge, "hinge"})

// Tests only (--NAME.testing.exit_after): the named client's process exits, as a killed device
// would, while training its Nth update.
struct AsyncTesting {
  FEDRA_ARG(std::string, exit_after) = "";
  template <class F>
  void visit(F&& f) {
    f("exit_after", exit_after_, "NAME:N: the worker NAME exits (code 3) during its Nth update");
  }
  void validate(const std::string&) const {}
};

// Local training's options (core/kit/option_groups.h), then this scheme's own.
struct AsyncOptions : LocalTrainingOptions {
  FEDRA_ARG(int64_t, updates) = 100;
  FEDRA_ARG(int64_t, concurrency) = 0;
  FEDRA_ARG(int64_t, buffer) = 10;
  FEDRA_ARG(double, mixing) = 0.6;
  FEDRA_ARG(Staleness, staleness) = Staleness::kPolynomial;
  FEDRA_ARG(double, staleness_a) = 0.5;
  FEDRA_ARG(double, staleness_b) = 4;
  FEDRA_ARG(int64_t, max_staleness) = 0;
  FEDRA_ARG(ServerOptOptions, server);
  FEDRA_ARG(FleetOptions, fleet);
  FEDRA_ARG(double, update_timeout) = 600;
  FEDRA_ARG(EvalOptions, eval);
  FEDRA_ARG(AsyncTesting, testing);
  Mode mode = Mode::kFedBuff;  // not an option: which strategy these are the options of

  template <class F>
  void visit(F&& f) {
    f("updates", updates_, "server updates to run (fedasync: updates applied; fedbuff: buffers flushed)");
    f("concurrency", concurrency_,
      "clients training at once; when one finishes, a seeded draw of the idle online clients takes its place "
      "(it may draw the same one); 0 = every connected client, each handed the newest model as it finishes");
    f("buffer", buffer_, "fedbuff: K, the updates averaged into one server step (fedasync: 1)");
    f("mixing", mixing_, "fedasync: a, the weight of a fresh update in x <- (1 - a s(tau)) x + a s(tau) w");
    f("staleness", staleness_,
      "s(tau), the weight of an update tau server updates old: constant, polynomial (tau+1)^-a or hinge "
      "(1 up to b, then 1/(a (tau-b) + 1))");
    f("staleness_a", staleness_a_, "a of polynomial and hinge");
    f("staleness_b", staleness_b_, "b of hinge");
    f("max_staleness", max_staleness_, "refuse (and count) updates staler than this; 0 = take all");
    f.group(local());
    f.group(server_);
    f.group(fleet_);
    f("update_timeout", update_timeout_, "wall seconds a client may take for one update before it is dropped");
    f.group(eval_);
    f.testing(testing_);
  }
  void validate() const;
  const LocalTrainingOptions& local() const { return *this; }
  LocalTrainingOptions& local() { return *this; }
  // s(tau).
  double staleness_weight(int64_t tau) const;
};

// Registrations: "fedasync" (buffer 1, applies every update) and "fedbuff".
StrategyInfo fedasync_strategy();
StrategyInfo fedbuff_strategy();

}  // namespace fedra::async
