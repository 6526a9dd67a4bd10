#include "tests/testing.h"

#include <torch/torch.h>

#include "strategies/builtin.h"
#include "strategies/fedavg/fedavg.h"

using namespace fedra;
using namespace fedra::fedavg;

TEST_CASE("fedavg options are validated with the option named") {
  CHECK_THROWS_WITH_AS(parse_options<FedAvgOptions>(OptionMap("fedavg", {{"fraction", "1.5"}})),
                       "fedavg.fraction must be in (0, 1], got 1.5", fedra::Error);
  CHECK_THROWS_WITH_AS(parse_options<FedAvgOptions>(OptionMap("fedavg", {{"optimizer", "lbfgs"}})),
                       "unknown optimizer 'lbfgs'; use sgd or adam", fedra::Error);
  CHECK_THROWS_WITH_AS(parse_options<FedAvgOptions>(OptionMap("fedavg", {{"local_epochs", "-1"}})),
                       "fedavg local_epochs and local_steps must be >= 0", fedra::Error);
  CHECK(parse_options<FedAvgOptions>(OptionMap("fedavg", {{"local_epochs", "0"}, {"local_steps", "1"}}))
            .local_steps() == 1);
}

TEST_CASE("the registry lists fedavg with every option documented and refuses duplicates") {
  StrategyRegistry registry;
  register_builtin_strategies(registry);
  const StrategyInfo& info = registry.get("fedavg");
  // 13, proximal_mu, scaffold, exchange_only, 6 server optimiser, 6 robust, 9 privacy, 6 secure aggregation,
  // 2 federated evaluation, 5 testing, round_deadline, 2 fleet
  CHECK(info.options.size() == 54);
  for (const auto& o : info.options) CHECK_FALSE(o.help.empty());
  const OptionMap resolved = registry.resolve_options("fedavg", OptionMap("fedavg", {{"rounds", "3"}}));
  CHECK(resolved.get_int("rounds", 0) == 3);
  CHECK(resolved.get_string("optimizer", "") == "sgd");
  CHECK_THROWS_WITH_AS(registry.add(fedavg_strategy()), "two strategies are registered as 'fedavg'", fedra::Error);
  CHECK_THROWS_WITH_AS(registry.get("fedsgd"), doctest::Contains("unknown strategy 'fedsgd'; available: fedavg"),
                       fedra::Error);
}

namespace {
// A variant that reuses a name FedAvg's options already have.
struct ClashingOptions : FedAvgOptions {
  FEDRA_ARG(double, server_lr) = 1.0;
  template <class F>
  void visit(F&& f) {
    FedAvgOptions::visit(f);
    f("server_lr", server_lr_, "clashes with fedavg's server_lr");
  }
};
}  // namespace

TEST_CASE("a variant whose options reuse a name of the struct it extends is refused, naming the option") {
  StrategyRegistry registry;
  CHECK_THROWS_WITH_AS(registry.add(variant<FedAvgCoordinator, ClashingOptions>("clash", "test")),
                       "strategy 'clash' declares the option 'server_lr' twice (an options struct extending "
                       "another must not reuse one of its names)",
                       fedra::Error);
}

