#include "strategies/psl/internal.h"
#include "strategies/psl/psl.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <numeric>
#include <optional>
#include <random>
#include <set>
#include <sstream>

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "core/data/batching.h"
#include "core/data/tensor_checks.h"
#include "core/loops/cohort.h"
#include "core/model/model.h"
#include "core/training/optimizer.h"
#include "core/training/training.h"

namespace fedra::psl {

std::string join_ints(const std::vector<int64_t>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s;
}

std::vector<int64_t> parse_ints(const std::string& text) {
  std::vector<int64_t> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (!item.empty()) out.push_back(std::stoll(item));
  }
  return out;
}

// Pairs as "i-j,i-j".
std::string pairs_text(const Share& s) {
  std::string out;
  for (const auto& [i, j] : s.pairs) out += (out.empty() ? "" : ",") + fmt::format("{}-{}", i, j);
  return out;
}

Share parse_share(const std::string& towers, const std::string& pairs) {
  Share s;
  s.towers = parse_ints(towers);
  std::stringstream ss(pairs);
  std::string item;
  while (std::getline(ss, item, ',')) {
    const auto dash = item.find('-');
    FEDRA_REQUIRE(dash != std::string::npos, "psl: bad pair '{}'", item);
    s.pairs.emplace_back(std::stoll(item.substr(0, dash)), std::stoll(item.substr(dash + 1)));
  }
  return s;
}

int64_t classes_of(torch::nn::Module& model) {
  for (const auto& p : model.named_parameters()) {
    if (p.key() == "sl3.weight") return p.value().size(0);
  }
  FEDRA_FAIL("the psl strategy needs the psnet model (towers of separable layers); use --model psnet");
}


std::vector<Share> assign_pairs(int64_t classes, int64_t workers, int64_t restarts) {
  const int64_t npairs = classes * (classes - 1) / 2;
  FEDRA_REQUIRE(classes >= 2 && workers >= 1 && workers <= npairs,
                "psl: {} workers cannot share the {} class pairs of {} classes (1 to {} workers)", workers, npairs,
                classes, npairs);
  std::vector<std::pair<int64_t, int64_t>> pairs;
  for (int64_t i = 0; i < classes; ++i) {
    for (int64_t j = i + 1; j < classes; ++j) pairs.emplace_back(i, j);
  }
  const int64_t base = npairs / workers, extra = npairs % workers;  // the first `extra` get one more
  std::vector<Share> best;
  std::pair<int64_t, int64_t> best_score{INT64_MAX, INT64_MAX};
  std::mt19937_64 rng(12345);
  for (int64_t r = 0; r < std::max<int64_t>(1, restarts); ++r) {
    auto order = pairs;
    if (r > 0) std::shuffle(order.begin(), order.end(), rng);
    std::vector<std::set<int64_t>> towers(static_cast<size_t>(workers));
    std::vector<Share> shares(static_cast<size_t>(workers));
    for (const auto& [i, j] : order) {
      size_t pick = 0;
      std::tuple<int64_t, int64_t, int64_t> pick_cost{INT64_MAX, INT64_MAX, INT64_MAX};
      for (size_t k = 0; k < shares.size(); ++k) {
        const int64_t cap = base + (static_cast<int64_t>(k) < extra ? 1 : 0);
        if (static_cast<int64_t>(shares[k].pairs.size()) >= cap) continue;
        const int64_t grow = (towers[k].count(i) ? 0 : 1) + (towers[k].count(j) ? 0 : 1);
        const std::tuple<int64_t, int64_t, int64_t> cost{grow, static_cast<int64_t>(towers[k].size()),
                                                         static_cast<int64_t>(shares[k].pairs.size())};
        if (cost < pick_cost) {
          pick_cost = cost;
          pick = k;
        }
      }
      shares[pick].pairs.emplace_back(i, j);
      towers[pick].insert(i);
      towers[pick].insert(j);
    }
    int64_t worst = 0, sum = 0;
    for (const auto& t : towers) {
      worst = std::max<int64_t>(worst, static_cast<int64_t>(t.size()));
      sum += static_cast<int64_t>(t.size());
    }
    if (std::make_pair(worst, sum) < best_score) {
      best_score = {worst, sum};
      for (size_t k = 0; k < shares.size(); ++k) {
        shares[k].towers.assign(towers[k].begin(), towers[k].end());
        std::sort(shares[k].pairs.begin(), shares[k].pairs.end());
      }
      best = shares;
    }
  }
  return best;
}

std::vector<SubParam> sub_network_map(const torch::nn::Module& full, int64_t classes,
                                      const std::vector<int64_t>& towers) {
  std::vector<SubParam> out;
  for (const auto& p : full.named_parameters()) {
    SubParam sp;
    sp.name = p.key();
    if (p.key().rfind("conv1.", 0) != 0) {  // per tower: rows r*t .. r*t + r - 1
      const int64_t rows = p.value().size(0);
      FEDRA_REQUIRE(rows % classes == 0, "psl: parameter '{}' has {} rows, not a multiple of {} towers", p.key(),
                    rows, classes);
      const int64_t r = rows / classes;
      std::vector<int64_t> idx;
      for (int64_t t : towers) {
        FEDRA_REQUIRE(t >= 0 && t < classes, "psl: tower {} of {}", t, classes);
        for (int64_t u = 0; u < r; ++u) idx.push_back(r * t + u);
      }
      sp.rows = torch::tensor(idx, torch::kLong);
    }
    out.push_back(std::move(sp));
  }
  return out;
}

int64_t sub_network_size(const torch::nn::Module& full, const std::vector<SubParam>& map) {
  std::map<std::string, at::Tensor> params;
  for (const auto& p : full.named_parameters()) params[p.key()] = p.value();
  int64_t n = 0;
  for (const auto& sp : map) {
    const at::Tensor& t = params.at(sp.name);
    n += sp.rows.defined() ? t.numel() / t.size(0) * sp.rows.size(0) : t.numel();
  }
  return n;
}

std::pair<at::Tensor, at::Tensor> select_rows(const at::Tensor& targets, const std::vector<int64_t>& towers) {
  // local[c] = index of class c among the towers, or -1.
  int64_t max_class = 0;
  for (int64_t t : towers) max_class = std::max(max_class, t);
  const int64_t top = std::max<int64_t>(max_class + 1, targets.numel() > 0 ? targets.max().item<int64_t>() + 1 : 0);
  at::Tensor local = torch::full({top}, -1, torch::kLong);
  for (size_t k = 0; k < towers.size(); ++k) local[towers[k]] = static_cast<int64_t>(k);
  const at::Tensor mapped = local.index_select(0, targets.to(torch::kLong).reshape({-1}));
  const at::Tensor rows = (mapped >= 0).nonzero().reshape({-1});
  return {rows, mapped.index_select(0, rows)};
}

at::Tensor element_loss(const at::Tensor& scores, const at::Tensor& local_targets, const Share& share,
                        int64_t batch_size, bool squared) {
  const auto T = static_cast<int64_t>(share.towers.size());
  FEDRA_REQUIRE(scores.dim() == 2 && scores.size(1) == T && local_targets.size(0) == scores.size(0),
                "psl element loss: scores {} for {} towers and targets {}", describe_tensor(scores), T,
                describe_tensor(local_targets));
  std::map<int64_t, int64_t> local;
  for (int64_t k = 0; k < T; ++k) local[share.towers[static_cast<size_t>(k)]] = k;
  // owned[a][c] = 1 when the pair {tower a, tower c} is this worker's: elements (a, c) and (c, a).
  at::Tensor owned = torch::zeros({T, T}, scores.options());
  for (const auto& [i, j] : share.pairs) {
    const int64_t a = local.at(i), c = local.at(j);
    owned[a][c] = 1;
    owned[c][a] = 1;
  }
  const at::Tensor sy = scores.gather(1, local_targets.reshape({-1, 1}));
  const at::Tensor terms = ((scores - sy) * (squared ? 2.0 : 1.0)).exp() * owned.index_select(0, local_targets);
  return terms.sum() / static_cast<double>(std::max<int64_t>(1, batch_size));
}

Message StepIns::encode() const {
  Message m(kStep, round);
  m.step = static_cast<uint64_t>(step);
  m.tensors = weights;
  if (x.defined()) {
    m.tensors.emplace_back("x", x);
    m.tensors.emplace_back("y", y);
    m.options["batch"] = std::to_string(batch);
  }
  m.options["towers"] = towers;
  m.options["pairs"] = pairs;
  return m;
}

StepIns StepIns::decode(const Message& m, bool rows) {
  FEDRA_REQUIRE(m.kind == kStep, "a psl worker cannot handle '{}'", m.kind);
  StepIns s;
  s.round = m.round;
  s.step = static_cast<int64_t>(m.step);
  s.towers = m.option("towers");
  s.pairs = m.option("pairs");
  for (const auto& [name, t] : m.tensors) {
    if (name == "x") s.x = t;
    else if (name == "y") s.y = t;
    else s.weights.emplace_back(name, t);
  }
  if (rows) {
    FEDRA_REQUIRE(s.x.defined() && s.y.defined(), "'{}' without the batch rows (data=coordinator)", kStep);
    s.batch = OptionMap(kStep, m.options).get_int("batch", 0);
    FEDRA_REQUIRE(s.batch >= s.x.size(0), "'{}' says the batch has {} rows but sends {}", kStep, s.batch, s.x.size(0));
  }
  return s;
}

Message StepGrad::encode(uint32_t round, int64_t step) const {
  Message m = encode_reply(kGrad, round, *this, &StepGrad::grads);
  m.step = static_cast<uint64_t>(step);
  return m;
}

StepGrad StepGrad::decode(Message&& m, const std::string& worker) {
  return decode_reply(std::move(m), kGrad, worker, worker + "'s", &StepGrad::grads);
}

StrategyInfo psl_strategy() {
  return make_strategy<PslOptions>("psl", "Partially separable element loss: each worker differentiates only its class towers",
                                   &new_coordinator, &new_worker);
}

}  // namespace fedra::psl
