#include "tests/testing.h"

#include <cmath>

#include <torch/torch.h>

#include "core/data/tensor_checks.h"

using namespace fedra;

TEST_CASE("all_finite finds a single NaN or infinity in every floating dtype, anywhere") {
  for (auto type : {torch::kFloat32, torch::kFloat64, torch::kFloat16, torch::kBFloat16,
                    torch::kComplexFloat, torch::kComplexDouble}) {
    CAPTURE(c10::toString(type));
    at::Tensor t = torch::randn({3000000}).to(type);
    CHECK(all_finite(t));
    for (int64_t at : {int64_t{0}, int64_t{1234567}, int64_t{2999999}}) {
      for (double bad : {std::nan(""), double{INFINITY}, -double{INFINITY}}) {
        at::Tensor u = t.clone();
        u[at] = bad;
        CHECK_FALSE(all_finite(u));
      }
    }
  }
  CHECK(all_finite(torch::randint(0, 100, {1000}, torch::kLong)));
  CHECK(all_finite(torch::empty({0})));
  CHECK(all_finite(torch::full({4}, 3.4e38f)));       // the largest floats are finite
  CHECK(all_finite(torch::full({4}, 1e-45f)));        // and so are denormals
  CHECK_FALSE(all_finite(torch::randn({10, 10}).t().contiguous().fill_(NAN)));
}
