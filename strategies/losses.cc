#include "strategies/losses.h"

#include <cmath>
#include <fstream>

#include <fmt/format.h>
#include <torch/torch.h>

#include "core/kit/error.h"
#include "core/kit/message.h"

namespace fedra {

void append_losses(const std::string& out_dir, uint32_t round, int64_t first_step, const at::Tensor& loss,
                   const at::Tensor& examples) {
  if (out_dir.empty()) return;
  const std::string path = out_dir + "/losses.csv";
  const bool fresh = !std::ifstream(path).good();
  std::ofstream f(path, std::ios::app);
  FEDRA_REQUIRE(f.good(), "cannot append to '{}'", path);
  if (fresh) f << "round,step,loss,examples\n";
  const auto l = loss.accessor<double, 1>();
  const auto e = examples.accessor<int64_t, 1>();
  for (int64_t i = 0; i < loss.size(0); ++i) {
    f << round << ',' << first_step + i << ',';
    if (e[i] > 0) f << fmt::format("{:.6f}", l[i]);
    f << ',' << e[i] << '\n';
  }
  f.flush();
  FEDRA_REQUIRE(f.good(), "cannot write '{}' (disk full?)", path);
}

std::pair<double, double> loss_summary(const at::Tensor& loss, const at::Tensor& examples) {
  double first = std::nan(""), sum = 0;
  int64_t n = 0;
  const auto l = loss.accessor<double, 1>();
  const auto e = examples.accessor<int64_t, 1>();
  for (int64_t i = 0; i < loss.size(0); ++i) {
    if (e[i] <= 0) continue;
    if (i == 0) first = l[i];
    sum += l[i];
    ++n;
  }
  return {first, n > 0 ? sum / static_cast<double>(n) : std::nan("")};
}

void check_losses(const at::Tensor& loss, const at::Tensor& examples, int64_t steps, const std::string& who) {
  FEDRA_REQUIRE(loss.defined() && examples.defined() && loss.dim() == 1 && loss.size(0) == steps &&
                    loss.scalar_type() == at::kDouble && examples.sizes() == loss.sizes() &&
                    examples.scalar_type() == at::kLong,
                "{} returned losses {} and example counts {} for {} steps", who,
                loss.defined() ? describe_tensor(loss) : "none", examples.defined() ? describe_tensor(examples) : "none",
                steps);
}

}  // namespace fedra
