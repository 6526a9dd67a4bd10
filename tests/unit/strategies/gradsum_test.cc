#include "tests/testing.h"

#include <ATen/ATen.h>

#include "core/data/batching.h"
#include "core/kit/options.h"
#include "strategies/gradsum/gradsum.h"

using namespace fedra;
using namespace fedra::gradsum;

TEST_CASE("buckets take parameters from the last back, cut large ones, cover every element once") {
  // Parameters of 400, 40, 4000 and 40 bytes.
  std::vector<at::Tensor> params = {at::zeros({100}), at::zeros({10}), at::zeros({1000}), at::zeros({10})};
  for (uint64_t limit : {uint64_t{1}, uint64_t{64}, uint64_t{1000}, uint64_t{1} << 20}) {
    INFO("bucket bytes " << limit);
    const auto buckets = plan_buckets(params, limit);
    std::vector<int64_t> next(params.size(), 0);  // next uncovered element of each parameter
    size_t expected_param = params.size() - 1;
    for (const auto& bucket : buckets) {
      REQUIRE(!bucket.empty());
      uint64_t bytes = 0;
      for (const Piece& p : bucket) {
        if (p.param != expected_param) {  // moved on to the previous parameter
          CHECK(next[expected_param] == params[expected_param].numel());
          CHECK(p.param + 1 == expected_param);
          expected_param = p.param;
        }
        CHECK(p.offset == next[p.param]);
        CHECK(p.count > 0);
        CHECK(p.count * 4 <= static_cast<int64_t>(std::max<uint64_t>(limit, 64)));
        next[p.param] += p.count;
        bytes += static_cast<uint64_t>(p.count) * 4;
      }
      CHECK(bytes < 2 * std::max<uint64_t>(limit, 64));
    }
    for (size_t i = 0; i < params.size(); ++i) CHECK(next[i] == params[i].numel());
  }
  // A limit above the model's size gives one bucket of whole parameters, last first.
  const auto one = plan_buckets(params, 1 << 20);
  REQUIRE(one.size() == 1);
  CHECK(one[0] == std::vector<Piece>{{3, 0, 10}, {2, 0, 1000}, {1, 0, 10}, {0, 0, 100}});
  // Pieces are whole 64-byte lines (16 floats) except a parameter's tail.
  const auto fine = plan_buckets(params, 100);
  CHECK(fine[0][1] == Piece{2, 0, 16});
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
  CHECK_THROWS_WITH_AS(parse({{"testing.inject", "exit"}}), doctest::Contains("gradsum.testing.inject must be"), Error);
  CHECK_THROWS_WITH_AS(parse({{"on_failure", "retry"}}), doctest::Contains("gradsum.on_failure"), Error);
}
