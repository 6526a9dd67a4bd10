// Server optimisers for round-based strategies: how the coordinator turns a round's aggregate of
// the workers' models into the next global model.
//
// With x the global model and a the round's aggregate (FedAvg: the example-weighted mean), the
// pseudo-gradient is d = x - a (Reddi et al. 2021 write Delta = a - x = -d). Then, per parameter
// and elementwise (m and v start at zero; no bias correction, as in the paper's Algorithm 2):
//   none      x <- a
//   momentum  v <- mu * v + d;                          x <- x - lr * v   (FedAvgM, Hsu et al. 2019)
//   adagrad   m <- b1 m + (1 - b1) Delta;  v <- v + Delta^2;               x <- x + lr m / (sqrt(v) + tau)
//   adam      m as adagrad;  v <- b2 v + (1 - b2) Delta^2;                 x <- x + lr m / (sqrt(v) + tau)
//   yogi      m as adagrad;  v <- v - (1 - b2) Delta^2 sign(v - Delta^2);  x <- x + lr m / (sqrt(v) + tau)
// (FedAdagrad, FedAdam, FedYogi: Reddi et al., "Adaptive Federated Optimization", ICLR 2021.)
// Only floating-point tensors are stepped; integer buffers take the aggregate's value.
// tests/reference/server_opt.py applies the same rules in numpy; tests compare against it.
#pragma once

#include <string>

#include "core/kit/message.h"
#include "core/kit/options.h"

namespace fedra {

enum class ServerOpt { kNone, kMomentum, kAdagrad, kAdam, kYogi };
FEDRA_ENUM_NAMES(ServerOpt, {ServerOpt::kNone, "none"}, {ServerOpt::kMomentum, "momentum"},
                 {ServerOpt::kAdagrad, "adagrad"}, {ServerOpt::kAdam, "adam"}, {ServerOpt::kYogi, "yogi"})

struct ServerOptOptions {
  FEDRA_ARG(ServerOpt, server_opt) = ServerOpt::kNone;
  FEDRA_ARG(double, server_lr) = 0;
  FEDRA_ARG(double, server_momentum) = 0.9;
  FEDRA_ARG(double, server_beta1) = 0.9;
  FEDRA_ARG(double, server_beta2) = 0.99;
  FEDRA_ARG(double, server_tau) = 1e-3;

  template <class F>
  void visit(F&& f) {
    f("server_opt", server_opt_,
      "server optimiser on the pseudo-gradient: none (plain average), momentum (FedAvgM), adagrad, adam or "
      "yogi (Reddi et al. 2021); docs/strategies.md");
    f("server_lr", server_lr_, "server learning rate; 0 = the optimiser's default (1 for momentum, 0.01 otherwise)");
    f("server_momentum", server_momentum_, "momentum: the velocity's decay");
    f("server_beta1", server_beta1_, "adagrad, adam, yogi: the first moment's decay");
    f("server_beta2", server_beta2_, "adam, yogi: the second moment's decay");
    f("server_tau", server_tau_, "adagrad, adam, yogi: added to sqrt(v), the degree of adaptivity");
  }
  void validate(const std::string& scope) const;
  // server_lr, or the optimiser's default when it is 0.
  double effective_lr() const;
};

class ServerOptimizer {
 public:
  explicit ServerOptimizer(ServerOptOptions options) : o_(std::move(options)) {}

  // Turns `aggregate` into the next global model in place, given the current one, `global` (same
  // names and shapes; checked by the caller).
  void step(const NamedTensors& global, NamedTensors& aggregate);

  // The optimiser's state under "server_opt/m/NAME" (not for momentum) and "server_opt/v/NAME"
  // (momentum's velocity, the adaptive ones' second moment), for checkpoints;
  // load_state() takes it back (an empty state: start from zero).
  NamedTensors state() const;
  void load_state(const NamedTensors& state);
  static bool is_state(const std::string& name) { return name.rfind("server_opt/", 0) == 0; }

 private:
  ServerOptOptions o_;
  NamedTensors m_, v_;  // by floating tensor, in the model's order (empty until the first step; m_ stays empty for momentum)
};

}  // namespace fedra
