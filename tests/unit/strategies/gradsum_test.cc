#include "tests/testing.h"

#include <ATen/ATen.h>

#include "core/options.h"
#include "strategies/gradsum/gradsum.h"

using namespace fedra;
using namespace fedra::gradsum;

TEST_CASE("buckets fill from the last parameter back and close at the size limit") {
  // 4 parameters of 400, 40, 4000 and 40 bytes.
  std::vector<at::Tensor> params = {at::zeros({100}), at::zeros({10}), at::zeros({1000}), at::zeros({10})};
  auto b = plan_buckets(params, 1000);
  REQUIRE(b.size() == 2);
  CHECK(b[0] == std::vector<size_t>{3, 2});
  CHECK(b[1] == std::vector<size_t>{1, 0});
  // One huge bucket holds everything; a tiny limit gives one parameter per bucket.
  CHECK(plan_buckets(params, 1 << 20).size() == 1);
  CHECK(plan_buckets(params, 1).size() == 4);
}

TEST_CASE("batch rows: sequential wraps by epoch, notebook reproduces Python's slicing") {
  using P = std::pair<int64_t, int64_t>;
  CHECK(batch_rows("sequential", 0, 0, 32, 100) == P{0, 32});
  CHECK(batch_rows("sequential", 3, 0, 32, 100) == P{96, 100});  // the short last batch
  CHECK(batch_rows("sequential", 4, 0, 32, 100) == P{0, 32});
  // x[i*32 % 320 : (i+1)*32 % 320]: step 9 is x[288:0], empty, as in the notebook.
  CHECK(batch_rows("notebook", 0, 0, 32, 320) == P{0, 32});
  CHECK(batch_rows("notebook", 8, 0, 32, 320) == P{256, 288});
  CHECK(batch_rows("notebook", 9, 0, 32, 320).first == batch_rows("notebook", 9, 0, 32, 320).second);
  // Replica r takes the batch replica 0 takes at step i + r.
  CHECK(batch_rows("notebook", 4, 1, 32, 320) == batch_rows("notebook", 5, 0, 32, 320));
}

TEST_CASE("gradsum options are validated with messages that name the option") {
  auto parse = [](std::map<std::string, std::string> m) {
    return parse_options<GradSumOptions>(OptionMap("gradsum", std::move(m)));
  };
  CHECK_NOTHROW(parse({}));
  CHECK_THROWS_WITH_AS(parse({{"reduce", "max"}}), doctest::Contains("gradsum.reduce must be sum or mean"), Error);
  CHECK_THROWS_WITH_AS(parse({{"sync", "weights"}}), doctest::Contains("gradsum.sync must be params or gradient"),
                       Error);
  CHECK_THROWS_WITH_AS(parse({{"batches", "random"}}), doctest::Contains("gradsum.batches must be"), Error);
  CHECK_THROWS_WITH_AS(parse({{"inject", "exit"}}), doctest::Contains("gradsum.inject must be"), Error);
  CHECK_THROWS_WITH_AS(parse({{"on_failure", "retry"}}), doctest::Contains("gradsum.on_failure"), Error);
}
