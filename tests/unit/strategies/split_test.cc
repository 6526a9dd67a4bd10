#include "tests/testing.h"

#include "core/kit/options.h"
#include "strategies/split/split.h"

using namespace fedra;
using namespace fedra::split;

TEST_CASE("split options are validated with messages that name the option") {
  auto parse = [](std::map<std::string, std::string> m) {
    return parse_options<SplitOptions>(OptionMap("split", std::move(m)));
  };
  CHECK_NOTHROW(parse({}));
  CHECK(parse({}).pipeline() == 1);  // exact sequential training unless asked
  CHECK_THROWS_WITH_AS(parse({{"labels", "server"}}), doctest::Contains("split.labels must be coordinator or worker"),
                       Error);
  CHECK_THROWS_WITH_AS(parse({{"schedule", "ring"}}), doctest::Contains("split.schedule must be sequential or parallel"),
                       Error);
  CHECK_THROWS_WITH_AS(parse({{"pipeline", "0"}}), doctest::Contains("split.pipeline must be >= 1"), Error);
  CHECK_THROWS_WITH_AS(parse({{"batches", "notebook"}}), doctest::Contains("split.batches must be shuffle or sequential"),
                       Error);
  CHECK_THROWS_WITH_AS(parse({{"exchange_only", "true"}, {"labels", "worker"}}),
                       doctest::Contains("exchange_only needs labels=coordinator"), Error);
  CHECK_THROWS_WITH_AS(parse({{"optimizer", "lbfgs"}}), doctest::Contains("lbfgs"), Error);
}
