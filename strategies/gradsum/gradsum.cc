// gradsum's options, bucket plan and layout, shared by its halves.
#include <algorithm>
#include <cstdlib>

#include <torch/torch.h>

#include "strategies/gradsum/internal.h"

namespace fedra::gradsum {

Injection parse_injection(const std::string& text) {
  if (text == "none") return {};
  const auto colon = text.find(':');
  const std::string what = text.substr(0, colon);
  FEDRA_REQUIRE((what == "exit" || what == "desync") && colon != std::string::npos,
                "gradsum.testing.inject must be none, exit:STEP or desync:STEP, got '{}'", text);
  char* end = nullptr;
  std::string num = text.substr(colon + 1), worker;
  if (const auto at = num.find('@'); at != std::string::npos) {
    worker = num.substr(at + 1);
    num = num.substr(0, at);
    FEDRA_REQUIRE(!worker.empty(), "gradsum.testing.inject: '{}' names no worker after '@'", text);
  }
  const long long step = std::strtoll(num.c_str(), &end, 10);
  FEDRA_REQUIRE(!num.empty() && *end == '\0' && step >= 0, "gradsum.testing.inject: '{}' is not a step", num);
  return {what, step, worker};
}


std::string Layout::piece_name(const Piece& p) const { return fmt::format("{}@{}", names[p.param], p.offset); }
at::Tensor Layout::slice(const Piece& p) const { return params[p.param].view({-1}).narrow(0, p.offset, p.count); }

Layout layout_of(torch::nn::Module& model, uint64_t bucket_bytes) {
  Layout l;
  for (const auto& p : model.named_parameters()) {
    l.names.push_back(p.key());
    l.params.push_back(p.value().detach());
  }
  FEDRA_REQUIRE(!l.params.empty(), "the model has no parameters to train");
  l.buckets = plan_buckets(l.params, bucket_bytes);
  l.buckets_of.assign(l.params.size(), {});
  for (size_t b = 0; b < l.buckets.size(); ++b) {
    for (const Piece& p : l.buckets[b]) l.buckets_of[p.param].push_back(b);
  }
  return l;
}

void GradSumOptions::validate() const {
  FEDRA_REQUIRE(bucket_kb_ >= 1, "gradsum.bucket_kb must be >= 1, got {}", bucket_kb_);
  FEDRA_REQUIRE(check_every_ >= 0, "gradsum.check_every must be >= 0, got {}", check_every_);
}

void GradSumTesting::validate(const std::string&) const { parse_injection(inject_); }

std::vector<std::vector<Piece>> plan_buckets(const std::vector<at::Tensor>& params, uint64_t bucket_bytes) {
  std::vector<std::vector<Piece>> buckets;
  std::vector<Piece> current;
  uint64_t bytes = 0;
  for (size_t k = params.size(); k-- > 0;) {
    const auto esize = static_cast<uint64_t>(params[k].element_size());
    const int64_t numel = params[k].numel();
    // Pieces hold whole 64-byte lines, so each starts 8-byte aligned and travels zero-copy.
    const int64_t line = static_cast<int64_t>(std::max<uint64_t>(1, 64 / esize));
    const int64_t max_piece = std::max<int64_t>(line, static_cast<int64_t>(bucket_bytes / esize) / line * line);
    for (int64_t offset = 0; offset < numel || (numel == 0 && offset == 0);) {
      const int64_t count = std::min(max_piece, numel - offset);
      current.push_back({k, offset, count});
      bytes += static_cast<uint64_t>(count) * esize;
      offset += std::max<int64_t>(count, 1);
      if (bytes >= bucket_bytes) {
        buckets.push_back(std::move(current));
        current.clear();
        bytes = 0;
      }
    }
  }
  if (!current.empty()) buckets.push_back(std::move(current));
  return buckets;
}

StrategyInfo gradsum_strategy() {
  return make_strategy<GradSumOptions>("gradsum",
                                       "Gradient-summing replicas: every step, workers' gradients summed, one optimiser",
                                       &new_coordinator, &new_worker);
}

}  // namespace fedra::gradsum
