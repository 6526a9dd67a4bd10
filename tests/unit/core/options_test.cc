#include "tests/testing.h"

#include "core/kit/options.h"

using namespace fedra;

namespace {

struct DemoOptions {
  FEDRA_ARG(int64_t, rounds) = 10;
  FEDRA_ARG(double, lr) = 0.5;
  FEDRA_ARG(std::string, optimizer) = "sgd";
  FEDRA_ARG(bool, shuffle) = true;
  template <class F>
  void visit(F&& f) {
    f("rounds", rounds_, "rounds");
    f("lr", lr_, "learning rate");
    f("optimizer", optimizer_, "optimiser");
    f("shuffle", shuffle_, "shuffle");
  }
  void validate() const { FEDRA_REQUIRE(rounds_ > 0, "demo.rounds must be > 0, got {}", rounds_); }
};

}  // namespace

TEST_CASE("typed options come from one declaration: specs, parsing, validation, resolved map") {
  const auto specs = option_specs<DemoOptions>();
  REQUIRE(specs.size() == 4);
  CHECK(specs[0].name == "rounds");
  CHECK(specs[0].default_value == "10");
  CHECK(specs[3].default_value == "true");

  OptionMap given("demo", {{"rounds", "3"}, {"lr", "0.25"}, {"shuffle", "false"}});
  const DemoOptions o = parse_options<DemoOptions>(given);
  CHECK(o.rounds() == 3);
  CHECK(o.lr() == 0.25);
  CHECK(o.optimizer() == "sgd");
  CHECK_FALSE(o.shuffle());
  CHECK(options_to_map(o).at("lr") == "0.25");

  DemoOptions chained = DemoOptions().rounds(7).lr(0.1);
  CHECK(chained.rounds() == 7);
}

TEST_CASE("bad option values and unknown names are reported with scope and value") {
  CHECK_THROWS_WITH_AS(parse_options<DemoOptions>(OptionMap("demo", {{"rounds", "ten"}})),
                       "option demo.rounds: 'ten' is not an integer", fedra::Error);
  CHECK_THROWS_WITH_AS(parse_options<DemoOptions>(OptionMap("demo", {{"lr", "fast"}})),
                       "option demo.lr: 'fast' is not a finite number", fedra::Error);
  CHECK_THROWS_WITH_AS(parse_options<DemoOptions>(OptionMap("demo", {{"rounds", "0"}})),
                       "demo.rounds must be > 0, got 0", fedra::Error);
  CHECK_THROWS_WITH_AS(parse_options<DemoOptions>(OptionMap("demo", {{"round", "3"}})),
                       doctest::Contains("unknown option 'round' for demo"), fedra::Error);
}

TEST_CASE("spec strings parse into a name and key=value options") {
  const Spec s = parse_spec("dirichlet: alpha=0.3 , min_size=5", "partition");
  CHECK(s.name == "dirichlet");
  CHECK(s.args.get_double("alpha", 0) == 0.3);
  CHECK(s.args.get_int("min_size", 0) == 5);
  CHECK(parse_spec("iid", "partition").args.values().empty());
  CHECK_THROWS_WITH_AS(parse_spec("dirichlet:alpha", "partition"),
                       doctest::Contains("'alpha' is not key=value"), fedra::Error);
}
