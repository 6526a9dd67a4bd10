// Every option of every command, given what a mistyping user gives: a number below its range,
// above it, nan, inf, a negative where only counts make sense, text where a number goes. Each must
// be refused by the option reading itself (before a socket opens or a worker starts), in one line
// that names the option. The tables are the program's own (the options' descriptions and their
// ranges in apps/fedra/groups.cc, the strategies' option lists), so an option added later is
// covered, and one added without a range fails here.
#include "tests/testing.h"

#include <cmath>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "apps/fedra/cli.h"
#include "apps/fedra/groups.h"
#include "strategies/builtin.h"

using namespace fedra;
using fedra::cli::Command;

namespace {

namespace po = boost::program_options;

struct CommandName {
  Command command;
  const char* name;
};
const CommandName kCommands[] = {{Command::kCoordinator, "coordinator"},
                                 {Command::kWorker, "worker"},
                                 {Command::kSimulate, "simulate"},
                                 {Command::kTrain, "train"},
                                 {Command::kCerts, "certs"}};

// The refusal of `fedra COMMAND --NAME VALUE`, or "" if it was accepted.
std::string refusal(const StrategyRegistry& registry, const CommandName& c, const std::string& name,
                    const std::string& value) {
  const std::string flag = "--" + name;
  const char* argv[] = {c.name, flag.c_str(), value.c_str()};
  try {
    cli::parse(c.command, 3, argv, registry);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

enum class Kind { kNone, kInt, kDouble };

Kind kind_of(const po::option_description& o) {
  const po::value_semantic* s = o.semantic().get();
  if (dynamic_cast<const po::typed_value<int>*>(s) || dynamic_cast<const po::typed_value<int64_t>*>(s)) {
    return Kind::kInt;
  }
  if (dynamic_cast<const po::typed_value<double>*>(s)) return Kind::kDouble;
  return Kind::kNone;
}

std::string number_text(double v, Kind kind) {
  if (kind == Kind::kInt) return v >= 9.2e18 ? "9223372036854775808" : std::to_string(static_cast<int64_t>(v));
  return fmt::format("{:.17g}", v);
}

// Wrong values for an option of range `r`.
std::vector<std::string> wrong_values(const cli::NumberRange& r, Kind kind) {
  std::vector<std::string> out = {"nan", "inf", "-inf", "abc", "12abc", ""};
  if (kind == Kind::kInt) out.push_back("1.5");
  out.push_back(r.lo_open ? number_text(r.lo, kind) : number_text(r.lo - 1, kind));  // below
  out.push_back(r.hi_open ? number_text(r.hi, kind)                                   // above
                          : kind == Kind::kInt ? number_text(r.hi + 1, kind) : number_text(r.hi * 10 + 1, kind));
  if (r.lo >= 0) out.push_back("-1");  // a negative where only counts, sizes and times make sense
  return out;
}

}  // namespace

TEST_CASE("every numeric option of every command has a range, and refuses what lies outside it, naming itself") {
  StrategyRegistry registry;
  register_builtin_strategies(registry);
  const cli::Groups groups(registry);
  int checked = 0;
  for (const CommandName& c : kCommands) {
    const po::options_description options = groups.for_command(c.command);
    for (const auto& o : options.options()) {
      const Kind kind = kind_of(*o);
      if (kind == Kind::kNone) continue;
      const std::string name = o->long_name();
      const cli::NumberRange* r = cli::number_range(c.name, name);
      INFO("fedra ", c.name, " --", name);
      REQUIRE_MESSAGE(r != nullptr, "a numeric option without a range in apps/fedra/groups.cc number_range");
      for (const std::string& value : wrong_values(*r, kind)) {
        INFO("value '", value, "'");
        const std::string said = refusal(registry, c, name, value);
        CHECK(said.find("--" + name) != std::string::npos);
        CHECK(said.find('\n') == std::string::npos);
        ++checked;
      }
      // Its default and its bounds are accepted: the range is not too tight.
      CHECK(refusal(registry, c, name, number_text(r->lo_open ? r->hi : r->lo, kind)) == "");
    }
  }
  CHECK(checked > 300);  // 5 commands, some 25 numeric options
}

TEST_CASE("the cases users met: wrapped counts, infinite timeouts, nonsense fractions and partitions") {
  StrategyRegistry registry;
  register_builtin_strategies(registry);
  const CommandName coordinator = kCommands[0], worker = kCommands[1], simulate = kCommands[2];
  CHECK(refusal(registry, coordinator, "min-workers", "-1") ==
        "--min-workers must be an integer in [1, 1000000], got -1");
  CHECK(refusal(registry, coordinator, "wait-timeout", "inf") ==
        "--wait-timeout must be a finite number in (0, 1000000000] seconds, got inf");
  CHECK(refusal(registry, coordinator, "handshake-timeout", "1e300").find("--handshake-timeout must be a finite "
                                                                          "number in (0, 1000000000] seconds") == 0);
  CHECK(refusal(registry, coordinator, "seed", "-1") == "--seed must be an integer in [0, 9223372036854775807], got -1");
  CHECK(refusal(registry, coordinator, "threads", "-5") == "--threads must be an integer in [-1, 4096], got -5");
  CHECK(refusal(registry, worker, "holdout", "nan") == "--holdout must be a finite number in [0, 1), got nan");
  CHECK(refusal(registry, worker, "partition", "dirichlet:alpha=-1") ==
        "--partition dirichlet:alpha=-1: dirichlet alpha must be > 0, got -1");
  CHECK(refusal(registry, simulate, "partition", "shards:k=0") == "--partition shards:k=0: shards:k must be >= 1, got 0");
  CHECK(refusal(registry, simulate, "partition", "dirichlet:alpha=nan").find("is not a finite number") !=
        std::string::npos);
  CHECK(refusal(registry, simulate, "dataset", "fmnist:limit=-1") ==
        "--dataset fmnist:limit=-1: dataset 'fmnist': limit must be >= 0 (0: every example), got -1");
  CHECK(refusal(registry, coordinator, "test-data", "fmnist:test_limit=-5").find("--test-data fmnist:test_limit=-5: ") ==
        0);
}

// The refusal of a strategy's coordinator made with `name = value`, or "" if it was made.
std::string strategy_refusal(const StrategyInfo& s, const std::string& name, const std::string& value) {
  Job job;
  job.strategy = s.name;
  job.model = "mlp:784-10";
  job.options = OptionMap(s.name, {{name, value}});
  try {
    s.make_coordinator(job);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// The strategies' options (--fedavg.lr, [fedavg] lr = ...) are read when the coordinator is made,
// before it listens: each numeric one refuses what no number of its kind can mean, and a duration
// one that its clock cannot hold.
TEST_CASE("every numeric strategy option refuses nan, inf, text and numbers beyond float32, naming itself") {
  StrategyRegistry registry;
  register_builtin_strategies(registry);
  int checked = 0;
  for (const StrategyInfo& s : registry.list()) {
    for (const OptionSpec& o : s.options) {
      const std::string& d = o.default_value;
      const bool numeric = o.choices.empty() && d != "true" && d != "false" && !d.empty() &&
                           d.find_first_not_of("0123456789.-e+") == std::string::npos;
      if (!numeric) continue;
      const bool integral = strategy_refusal(s, o.name, "1.5").find("is not an integer") != std::string::npos;
      std::vector<std::string> values = {"nan", "inf", "abc", "1e300", "-1e300"};
      if (integral) values.push_back("99999999999999999999");  // beyond int64
      const bool seconds = o.name.size() > 8 && (o.name.rfind("_timeout") == o.name.size() - 8 ||
                                                 o.name.rfind("_deadline") == o.name.size() - 9);
      if (seconds) values.push_back("1e10");  // 317 years: beyond what a timeout may say
      for (const std::string& value : values) {
        INFO(s.name, ".", o.name, " = ", value);
        CHECK(strategy_refusal(s, o.name, value).find(o.name) != std::string::npos);
        ++checked;
      }
    }
  }
  CHECK(checked > 300);
}

TEST_CASE("no local training at all is refused unless it is asked for by name") {
  StrategyRegistry registry;
  register_builtin_strategies(registry);
  Job job;
  job.strategy = "fedavg";
  job.model = "mlp:784-10";
  job.options = OptionMap("fedavg", {{"local_epochs", "0"}, {"local_steps", "0"}});
  CHECK_THROWS_WITH(registry.get("fedavg").make_coordinator(job),
                    doctest::Contains("fedavg.local_epochs 0 and fedavg.local_steps 0 train nothing"));
  job.options.set("exchange_only", "true");
  CHECK_NOTHROW(registry.get("fedavg").make_coordinator(job));
}
