// Every strategy's two halves exchanging real frames in one process (LocalCohort): no sockets,
// no child processes, each checked against the same training done without Fedra.
#include "tests/testing.h"

#include <cmath>
#include <limits>
#include <map>

#include <torch/torch.h>

#include "core/data/batching.h"
#include "core/data/partition.h"
#include "core/federated/privacy.h"
#include "core/model/model.h"
#include "core/training/training.h"
#include "strategies/builtin.h"
#include "strategies/fedavg/fedavg.h"
#include "tests/support/local_cohort.h"
#include "tests/test_util.h"

using namespace fedra;
using namespace fedra::test;
using namespace fedra::test::lines;

namespace {

constexpr uint64_t kSeed = 5;

std::vector<LocalWorker> iid_workers(const std::string& data, int64_t n) { return test::iid_workers(data, n, kSeed); }

std::vector<LocalWorker> full_workers(const std::string& data, int64_t n) {
  auto all = std::make_shared<Dataset>(load_dataset(data, Splits::kTrain).train);
  std::vector<LocalWorker> out;
  for (int64_t k = 0; k < n; ++k) out.push_back({fmt::format("worker-{}", k), all});
  return out;
}

Job job_of(const std::string& strategy, const std::string& model, const std::string& loss,
           std::map<std::string, std::string> options) {
  return make_job(strategy, model, loss, std::move(options), kSeed);
}

struct InProcessRun {
  std::vector<Metrics> lines;
  NamedTensors model;  // OUT/model.bin, when the strategy writes one
};

// Runs `coordinator` against worker halves built from the registry, as `fedra simulate` would.
// `lines`, if given, collects the rounds' lines as they are reported (kept if the run throws).
InProcessRun run(CoordinatorStrategy& coordinator, const Job& job, std::vector<LocalWorker> workers,
                 const std::string& dataset = "", InProcessRun* lines = nullptr) {
  StrategyRegistry registry;
  register_builtin_strategies(registry);
  LocalCohort cohort(job, registry, std::move(workers));
  TempDir dir;
  InProcessRun own;
  InProcessRun& r = lines != nullptr ? *lines : own;
  RunContext ctx;
  ctx.job = job;
  ctx.dataset = dataset;
  ctx.out_dir = dir.path();
  ctx.wait_timeout = std::chrono::milliseconds(1000);
  ctx.report_round = [&](uint32_t, uint32_t, Metrics m) { r.lines.push_back(std::move(m)); };
  coordinator.run(cohort, ctx);
  if (std::filesystem::exists(dir / "model.bin")) r.model = load_model_file(dir / "model.bin");
  return r;
}

std::unique_ptr<CoordinatorStrategy> coordinator_of(const Job& job) {
  StrategyRegistry registry;
  register_builtin_strategies(registry);
  return registry.get(job.strategy).make_coordinator(job);
}

NamedTensors cloned(const NamedTensors& s) {
  NamedTensors out;
  for (const auto& [n, t] : s) out.emplace_back(n, t.clone());
  return out;
}

// One model, sequential batches of the whole training set, torch::optim::SGD.
NamedTensors train_plain(const std::string& data, const std::string& model_spec, const std::string& loss,
                         int64_t steps, int64_t batch, double lr) {
  const Dataset all = load_dataset(data, Splits::kTrain).train;
  torch::nn::Sequential model = build_model(model_spec, kSeed);
  torch::optim::SGD opt(model->parameters(), torch::optim::SGDOptions(lr));
  for (int64_t k = 0; k < steps; ++k) {
    const auto [b, e] = batch_rows("sequential", k, 0, batch, all.size());
    opt.zero_grad();
    compute_loss(model->forward(all.inputs.narrow(0, b, e - b)), all.targets.narrow(0, b, e - b), loss).backward();
    opt.step();
  }
  return cloned(model_state(*model));
}

// A worker's first round of FedAvg done directly: one epoch from the initial model, batch 16, SGD
// lr 0.1 momentum 0.9, bce, the worker's seed for round 1.
torch::nn::Sequential train_first_round(const Job& job, const LocalWorker& worker) {
  torch::nn::Sequential local = build_model(job.model, job.seed);
  TrainOptions t;
  t.batch_size = 16;
  t.optim.lr = 0.1;
  t.optim.momentum = 0.9;
  t.loss = "bce";
  t.seed = worker_seed(job.seed, 1, worker.name);
  train_local(local, *worker.data, t);
  return local;
}

// FedAvg's coordinator with its global model in view.
struct Probe : fedavg::FedAvgCoordinator {
  using FedAvgCoordinator::FedAvgCoordinator;
  using FedAvgCoordinator::checkpoint_state;
  using FedAvgCoordinator::global;
};

// Each worker's part split into training data and a held-out part for federated evaluation.
std::vector<LocalWorker> held_out_workers(const std::string& data, int64_t n, double holdout) {
  std::vector<LocalWorker> out = iid_workers(data, n);
  for (size_t k = 0; k < out.size(); ++k) {
    auto [train, held] = holdout_split(*out[k].data, holdout, 100 + k);
    out[k].data = std::make_shared<Dataset>(std::move(train));
    out[k].eval_data = std::make_shared<Dataset>(std::move(held));
  }
  return out;
}

// FedAvg's weighted mean of the given local models, in float64.
NamedTensors weighted_mean(const std::vector<NamedTensors>& models, const std::vector<double>& weights) {
  double total = 0;
  for (double w : weights) total += w;
  NamedTensors mean;
  for (size_t k = 0; k < models.size(); ++k) {
    for (size_t i = 0; i < models[k].size(); ++i) {
      const at::Tensor t = models[k][i].second.to(at::kDouble) * (weights[k] / total);
      if (k == 0) {
        mean.emplace_back(models[k][i].first, t);
      } else {
        mean[i].second += t;
      }
    }
  }
  return mean;
}

NamedTensors as_double(const NamedTensors& m) {
  NamedTensors out;
  for (const auto& [n, t] : m) out.emplace_back(n, t.to(at::kDouble));
  return out;
}

const char* kData = "synthetic:n=240,features=16,classes=2,seed=3";

}  // namespace

TEST_CASE("fedavg in one process: the new global model is the example-weighted mean of the local models") {
  const Job job = job_of("fedavg", "mlp:16-8-1", "bce",
                         {{"rounds", "1"}, {"local_epochs", "1"}, {"batch_size", "16"}, {"lr", "0.1"}});
  // Uneven parts, so the weights of the mean matter.
  const Dataset all = load_dataset(kData, Splits::kTrain).train;
  std::vector<LocalWorker> workers;
  std::vector<int64_t> sizes = {40, 80, 120};
  int64_t at = 0;
  for (size_t k = 0; k < sizes.size(); ++k) {
    std::vector<int64_t> idx(static_cast<size_t>(sizes[k]));
    for (auto& i : idx) i = at++;
    workers.push_back({fmt::format("worker-{}", k), std::make_shared<Dataset>(subset(all, idx))});
  }
  // Each worker's local training, done here directly, then the example-weighted mean.
  NamedTensors want;
  for (size_t k = 0; k < workers.size(); ++k) {
    torch::nn::Sequential local = train_first_round(job, workers[k]);
    const double w = static_cast<double>(sizes[k]) / 240.0;
    const auto state = model_state(*local);
    if (want.empty()) {
      for (const auto& [n, p] : state) want.emplace_back(n, p.to(at::kDouble) * w);
    } else {
      for (size_t i = 0; i < state.size(); ++i) want[i].second += state[i].second.to(at::kDouble) * w;
    }
  }
  Probe coordinator(job, parse_options<fedavg::FedAvgOptions>(job.options));
  const auto r = run(coordinator, job, workers);
  REQUIRE(r.lines.size() == 1);
  CHECK(metric<std::string>(r.lines[0], "status") == "ok");
  CHECK(metric<int64_t>(r.lines[0], "workers_ok") == 3);
  CHECK(metric<int64_t>(r.lines[0], "train_examples") == 240);
  NamedTensors got;
  for (const auto& [n, t] : coordinator.global()) got.emplace_back(n, t.to(at::kDouble));
  CHECK(max_diff(got, want) < 1e-6);
  CHECK(max_diff(got, model_state(*build_model(job.model, job.seed))) > 1e-3);  // it trained
}

TEST_CASE("a fedavg subclass changes only what it overrides: a server update on the weighted mean") {
  // Half a step towards the workers' mean: global + 0.5 (mean - global).
  struct HalfStep : fedavg::FedAvgCoordinator {
    using FedAvgCoordinator::FedAvgCoordinator;
    using FedAvgCoordinator::global;
    void server_update(uint32_t round, NamedTensors mean) override {
      seen_mean = cloned(mean);
      NamedTensors next = global();
      for (size_t i = 0; i < next.size(); ++i) next[i].second = next[i].second + 0.5 * (mean[i].second - next[i].second);
      FedAvgCoordinator::server_update(round, std::move(next));
    }
    NamedTensors seen_mean;
  };
  const Job job = job_of("fedavg", "mlp:16-8-1", "bce", {{"rounds", "1"}, {"batch_size", "16"}});
  HalfStep coordinator(job, parse_options<fedavg::FedAvgOptions>(job.options));
  const NamedTensors before = cloned(coordinator.global());
  run(coordinator, job, iid_workers(kData, 2));
  for (size_t i = 0; i < before.size(); ++i) {
    const at::Tensor want = before[i].second + 0.5 * (coordinator.seen_mean[i].second - before[i].second);
    CHECK((coordinator.global()[i].second - want).abs().max().item<double>() < 1e-7);
  }
}

TEST_CASE("a fedavg result without train_loss is refused with the field named, not averaged in as 0") {
  struct NoLoss : fedavg::FedAvgWorker {
    using FedAvgWorker::FedAvgWorker;
    Message handle(const Message& request, WorkerContext& ctx, WorkerLink& link) override {
      Message reply = FedAvgWorker::handle(request, ctx, link);
      if (ctx.name == "worker-1") reply.metrics.erase("train_loss");
      return reply;
    }
  };
  StrategyRegistry registry;
  registry.add(fedavg::variant<Probe, fedavg::FedAvgOptions, NoLoss>("fedavg", "test"));
  const Job job = job_of("fedavg", "mlp:16-8-1", "bce", {{"rounds", "1"}, {"min_results", "2"}});
  LocalCohort cohort(job, registry, iid_workers(kData, 2));
  std::vector<Metrics> lines;
  RunContext ctx;
  ctx.job = job;
  ctx.report_round = [&](uint32_t, uint32_t, Metrics m) { lines.push_back(std::move(m)); };
  CHECK_THROWS_WITH_AS(registry.get("fedavg").make_coordinator(job)->run(cohort, ctx),
                       doctest::Contains("the last round (1) failed, so the model is that of an earlier round (0 of 1"),
                       fedra::Error);
  REQUIRE(lines.size() == 1);
  CHECK(metric<std::string>(lines[0], "status") == "failed");
  CHECK(metric<int64_t>(lines[0], "workers_failed") == 1);
  CHECK(contains(metric<std::string>(lines[0], "reason"), "rejected update from worker-1: its 'fedavg.fit_result' lacks the metric 'train_loss'"));
}

TEST_CASE("federated evaluation: the workers' held-out figures, example-weighted, equal evaluating on their union") {
  // A variant's own figure through FedAvgWorker::evaluation_metrics: the fraction predicted positive.
  struct Positives : fedavg::FedAvgWorker {
    using FedAvgWorker::FedAvgWorker;
    std::map<std::string, double> evaluation_metrics(torch::nn::Sequential& model, const Dataset& held) override {
      torch::NoGradGuard no_grad;
      return {{"positives", (model->forward(held.inputs) > 0).to(at::kDouble).mean().item<double>()}};
    }
  };
  StrategyRegistry registry;
  registry.add(fedavg::variant<Probe, fedavg::FedAvgOptions, Positives>("fedavg", "test"));
  const Job job = job_of("fedavg", "mlp:16-8-1", "bce",
                         {{"rounds", "2"}, {"batch_size", "16"}, {"fed_eval_every", "1"}, {"eval_every", "0"}});
  std::vector<LocalWorker> workers = held_out_workers(kData, 3, 0.25);
  workers.push_back({"worker-3", workers[0].data});  // holds nothing out: its evaluation fails, saying why
  std::vector<at::Tensor> xs, ys;
  for (size_t k = 0; k < 3; ++k) {
    xs.push_back(workers[k].eval_data->inputs);
    ys.push_back(workers[k].eval_data->targets);
  }
  Dataset all_held;
  all_held.num_classes = 2;
  all_held.inputs = torch::cat(xs);
  all_held.targets = torch::cat(ys);
  LocalCohort cohort(job, registry, std::move(workers));
  std::vector<Metrics> lines;
  RunContext ctx;
  ctx.job = job;
  ctx.report_round = [&](uint32_t, uint32_t, Metrics m) { lines.push_back(std::move(m)); };
  Probe coordinator(job, parse_options<fedavg::FedAvgOptions>(job.options));
  coordinator.run(cohort, ctx);
  REQUIRE(lines.size() == 2);
  const Metrics& last = lines.back();
  CHECK(metric<int64_t>(last, "fed_eval_workers_asked") == 4);
  CHECK(metric<int64_t>(last, "fed_eval_workers_ok") == 3);
  CHECK(metric<int64_t>(last, "fed_eval_workers_failed") == 1);
  CHECK(metric<std::string>(last, "fed_eval_workers") == "worker-0,worker-1,worker-2");
  CHECK(metric<int64_t>(last, "fed_eval_examples") == all_held.size());
  const auto weights = metric<std::vector<double>>(last, "fed_eval_weights");
  REQUIRE(weights.size() == 3);
  CHECK(weights[0] + weights[1] + weights[2] == doctest::Approx(1.0));
  // The same figures from the final global model evaluated here on the union of the held-out parts.
  torch::nn::Sequential model = build_model(job.model, job.seed);
  load_model_state(*model, coordinator.global());
  const EvalStats want = evaluate_model(model, all_held, "bce");
  CHECK(metric<double>(last, "fed_eval_accuracy") == doctest::Approx(want.accuracy).epsilon(1e-12));
  CHECK(metric<double>(last, "fed_eval_loss") == doctest::Approx(want.loss).epsilon(1e-5));
  const auto per_class = metric<std::vector<double>>(last, "fed_eval_class_examples");
  REQUIRE(per_class.size() == 2);
  CHECK(per_class[0] == static_cast<double>(want.class_examples[0]));
  CHECK(per_class[1] == static_cast<double>(want.class_examples[1]));
  const auto class_accuracy = metric<std::vector<double>>(last, "fed_eval_class_accuracy");
  CHECK(class_accuracy[1] ==
        doctest::Approx(static_cast<double>(want.class_correct[1]) / static_cast<double>(want.class_examples[1])));
  torch::NoGradGuard no_grad;
  CHECK(metric<double>(last, "fed_eval_positives") ==
        doctest::Approx((model->forward(all_held.inputs) > 0).to(at::kDouble).mean().item<double>()).epsilon(1e-12));
}

TEST_CASE("scaffold: two rounds equal the control-variate algorithm done by hand") {
  const int64_t steps = 5;
  const double lr = 0.1;
  const Job job = job_of("fedavg", "mlp:16-8-1", "bce",
                         {{"rounds", "2"}, {"local_steps", std::to_string(steps)}, {"local_epochs", "0"},
                          {"batch_size", "16"}, {"lr", "0.1"}, {"momentum", "0"}, {"scaffold", "true"}});
  const std::vector<LocalWorker> workers = iid_workers(kData, 2);
  // By hand (Karimireddy et al. 2020, Algorithm 1, option II): y_i from x with grad + c - c_i, then
  // c_i+ = c_i - c + (x - y_i) / (K lr), x <- weighted mean of y_i, c <- c + sum (c_i+ - c_i) / N.
  torch::nn::Sequential ref = build_model(job.model, job.seed);
  NamedTensors x = cloned(model_state(*ref));
  std::vector<at::Tensor> c(ref->parameters().size());
  for (size_t i = 0; i < c.size(); ++i) c[i] = torch::zeros_like(ref->parameters()[i]);
  std::vector<std::vector<at::Tensor>> ci(2, c);
  for (uint32_t round = 1; round <= 2; ++round) {
    std::vector<NamedTensors> ys;
    std::vector<double> sizes;
    std::vector<at::Tensor> c_sum(c.size());
    for (size_t k = 0; k < 2; ++k) {
      torch::nn::Sequential local = build_model(job.model, job.seed);
      load_model_state(*local, x);
      TrainOptions t;
      t.epochs = std::numeric_limits<int64_t>::max();
      t.max_steps = steps;
      t.batch_size = 16;
      t.optim.lr = lr;
      t.loss = "bce";
      t.seed = worker_seed(job.seed, round, workers[k].name);
      for (size_t i = 0; i < c.size(); ++i) t.grad_correction.push_back(c[i] - ci[k][i]);
      train_local(local, *workers[k].data, t);
      const auto params = local->parameters();
      for (size_t i = 0; i < c.size(); ++i) {
        const at::Tensor next = ci[k][i] - c[i] + (x[i].second - params[i].detach()) / (steps * lr);
        c_sum[i] = k == 0 ? next - ci[k][i] : c_sum[i] + (next - ci[k][i]);
        ci[k][i] = next;
      }
      ys.push_back(cloned(model_state(*local)));
      sizes.push_back(static_cast<double>(workers[k].data->size()));
    }
    NamedTensors mean = weighted_mean(ys, sizes);
    x.clear();
    for (const auto& [n, t] : mean) x.emplace_back(n, t.to(at::kFloat));
    for (size_t i = 0; i < c.size(); ++i) c[i] = c[i] + c_sum[i] / 2.0;
  }
  Probe coordinator(job, parse_options<fedavg::FedAvgOptions>(job.options));
  const auto r = run(coordinator, job, workers);
  REQUIRE(r.lines.size() == 2);
  CHECK(max_diff(as_double(coordinator.global()), as_double(x)) < 1e-5);
  // The server's c is checkpointed beside the model.
  NamedTensors saved_c;
  for (const auto& [n, t] : coordinator.checkpoint_state()) {
    if (n.rfind("scaffold/c/", 0) == 0) saved_c.emplace_back(n, t);
  }
  REQUIRE(saved_c.size() == c.size());
  for (size_t i = 0; i < c.size(); ++i) CHECK((saved_c[i].second - c[i]).abs().max().item<double>() < 1e-5);
  CHECK((c[0].abs().sum().item<double>()) > 0);  // the control variate moved
  CHECK_THROWS_WITH_AS(parse_options<fedavg::FedAvgOptions>(OptionMap("fedavg", {{"scaffold", "true"}})),
                       doctest::Contains("set --fedavg.momentum 0"), fedra::Error);
}

TEST_CASE("dp: clipped updates averaged over the sampled workers, noise as asked, epsilon from the accountant") {
  const auto dp_job = [](const std::string& mode, const std::string& noise, const std::string& seed) {
    return job_of("fedavg", "mlp:16-8-1", "bce",
                  {{"rounds", "2"}, {"batch_size", "16"}, {"lr", "0.1"}, {"fraction", "0.5"}, {"dp", mode},
                   {"dp_clip", "0.05"}, {"dp_noise", noise}, {"dp_seed", seed}});
  };
  const auto final_model = [](const Job& job, std::vector<Metrics>* lines = nullptr) {
    Probe coordinator(job, parse_options<fedavg::FedAvgOptions>(job.options));
    auto r = run(coordinator, job, iid_workers(kData, 4));
    if (lines != nullptr) *lines = r.lines;
    return cloned(coordinator.global());
  };
  // Without noise, server-side and client-side clipping give the same model: x + sum clip(u_i) / m.
  const NamedTensors server = final_model(dp_job("server", "0", "1"));
  const NamedTensors client = final_model(dp_job("client", "0", "1"));
  CHECK(max_diff(as_double(server), as_double(client)) < 1e-6);
  // Round 1 by hand: the 2 sampled workers' updates clipped to 0.05, summed, divided by 2.
  {
    const Job one = job_of("fedavg", "mlp:16-8-1", "bce",
                           {{"rounds", "1"}, {"batch_size", "16"}, {"lr", "0.1"}, {"fraction", "0.5"}, {"dp", "server"},
                            {"dp_clip", "0.05"}, {"dp_noise", "0"}});
    const NamedTensors got = final_model(one);
    const auto workers = iid_workers(kData, 4);
    const NamedTensors x = cloned(model_state(*build_model(one.model, one.seed)));
    // The sampled pair: the workers whose update the coordinator used; find it by trying each pair.
    double best = 1e9;
    for (size_t a = 0; a < 4; ++a) {
      for (size_t b = a + 1; b < 4; ++b) {
        NamedTensors sum = as_double(x);
        for (size_t k : {a, b}) {
          torch::nn::Sequential local = train_first_round(one, workers[k]);
          NamedTensors w = cloned(model_state(*local));
          auto gen = dp_generator(1);
          clip_and_noise(x, w, 0.05, 0, gen);
          for (size_t i = 0; i < sum.size(); ++i) sum[i].second += (w[i].second.to(at::kDouble) - x[i].second.to(at::kDouble)) / 2.0;
        }
        best = std::min(best, max_diff(as_double(got), sum));
      }
    }
    CHECK(best < 1e-6);
    CHECK(update_norm(x, got) <= 0.05 + 1e-6);  // the mean of two updates within 0.05
  }
  // The same dp_seed gives the same noise; the noise has the asked size: z C / m per coordinate.
  std::vector<Metrics> lines;
  const NamedTensors noisy = final_model(dp_job("server", "1.5", "7"), &lines);
  CHECK(max_diff(as_double(noisy), as_double(final_model(dp_job("server", "1.5", "7")))) == 0);
  CHECK(max_diff(as_double(noisy), as_double(final_model(dp_job("server", "1.5", "8")))) > 0);
  // Epsilon after each round: two rounds at q = 2/4, z = 1.5, from the accountant.
  REQUIRE(lines.size() == 2);
  for (size_t r = 0; r < 2; ++r) {
    RdpAccountant want;
    want.add(0.5, 1.5, static_cast<int64_t>(r + 1));
    CHECK(metric<double>(lines[r], "dp_epsilon") == doctest::Approx(want.epsilon(1e-5)));
    CHECK(metric<double>(lines[r], "dp_delta") == 1e-5);
  }
  CHECK_THROWS_WITH_AS(parse_options<fedavg::FedAvgOptions>(OptionMap("fedavg", {{"dp", "server"}, {"aggregate", "median"}})),
                       doctest::Contains("fedavg.dp needs aggregate=mean"), fedra::Error);
}

TEST_CASE("dp adaptive clipping moves C towards the target quantile of the update norms") {
  // Every update is far above C = 1e-4, so the unclipped fraction is ~0 and C grows each round by
  // about exp(eta * quantile); with no noise on the count exactly that.
  const Job job = job_of("fedavg", "mlp:16-8-1", "bce",
                         {{"rounds", "3"}, {"batch_size", "16"}, {"lr", "0.1"}, {"dp", "server"}, {"dp_clip", "1e-4"},
                          {"dp_noise", "0"}, {"dp_adaptive", "true"}, {"dp_clip_lr", "0.5"}, {"dp_quantile", "0.5"}});
  Probe coordinator(job, parse_options<fedavg::FedAvgOptions>(job.options));
  const auto r = run(coordinator, job, iid_workers(kData, 3));
  REQUIRE(r.lines.size() == 3);
  for (size_t k = 0; k < 3; ++k) {
    CHECK(metric<double>(r.lines[k], "dp_unclipped_fraction") == 0);
    CHECK(metric<double>(r.lines[k], "dp_clip") == doctest::Approx(1e-4 * std::exp(0.25 * static_cast<double>(k + 1))));
  }
}

TEST_CASE("a robust rule whose held updates would pass hold_budget_mb asks nobody and fails the round, saying why") {
  // mlp:784-200-200-10 is 0.8 MB: a budget of 2 MB holds two updates of the three sampled.
  const Job job = job_of("fedavg", "mlp:784-200-200-10", "ce",
                         {{"rounds", "1"}, {"aggregate", "median"}, {"hold_budget_mb", "2"}});
  Probe coordinator(job, parse_options<fedavg::FedAvgOptions>(job.options));
  InProcessRun r;
  CHECK_THROWS_WITH_AS(run(coordinator, job, iid_workers("synthetic:n=30,features=784,classes=10,seed=3", 3), "", &r),
                       doctest::Contains("the last round (1) failed"), fedra::Error);
  REQUIRE(r.lines.size() == 1);
  CHECK(metric<std::string>(r.lines[0], "status") == "failed");
  CHECK(metric<int64_t>(r.lines[0], "workers_asked") == 0);  // nobody trained for nothing
  CHECK(metric<std::string>(r.lines[0], "reason") ==
        "round 1: aggregate=median holds every update, and 3 updates of 0.8 MB need 2.4 MB, over "
        "fedavg.hold_budget_mb = 2; raise the budget, sample fewer workers (fraction) or use aggregate=mean");
}

TEST_CASE("gradsum in one process: replicas averaging gradients take one model's steps") {
  // Every worker holds all the data and takes the same sequential batches, so the mean of the
  // replicas' gradients is the one model's gradient.
  const Job job = job_of("gradsum", "mlp:16-64-32-1", "bce",
                         {{"steps", "6"}, {"steps_per_round", "4"}, {"batch_size", "16"}, {"batches", "sequential"},
                          {"lr", "0.2"}, {"reduce", "mean"}, {"bucket_kb", "1"}, {"check_every", "1"}});
  auto coordinator = coordinator_of(job);
  const auto r = run(*coordinator, job, full_workers(kData, 2), kData);
  REQUIRE(r.lines.size() == 2);
  CHECK(metric<int64_t>(r.lines[0], "sync_checks") == 8);  // both replicas matched at every step
  CHECK(max_diff(r.model, train_plain(kData, job.model, "bce", 6, 16, 0.2)) < 2e-6);
}

TEST_CASE("split in one process: one worker and the coordinator train the whole network's steps") {
  const Job job = job_of("split", "mlp:16-64-32-1,cut=relu1", "bce",
                         {{"epochs", "1"}, {"batch_size", "16"}, {"batches", "sequential"}, {"lr", "0.2"}});
  auto coordinator = coordinator_of(job);
  const auto r = run(*coordinator, job, full_workers(kData, 1));
  REQUIRE(r.lines.size() == 1);
  CHECK(metric<int64_t>(r.lines[0], "steps") == 15);
  CHECK(max_diff(r.model, train_plain(kData, job.model, "bce", 15, 16, 0.2)) < 2e-6);
}

TEST_CASE("tensor and pipeline in one process: the split model takes the one model's steps") {
  for (const std::string strategy : {"tensor", "pipeline"}) {
    INFO(strategy);
    std::map<std::string, std::string> o = {{"steps", "5"}, {"batch_size", "16"}, {"batches", "sequential"},
                                            {"lr", "0.2"}};
    if (strategy == "pipeline") o["in_flight"] = "1";
    const Job job = job_of(strategy, "mlp:16-8-6-4-1", "bce", o);
    auto coordinator = coordinator_of(job);
    const auto r = run(*coordinator, job, full_workers(kData, 2));
    REQUIRE(r.lines.size() == 1);
    const NamedTensors want = train_plain(kData, job.model, "bce", 5, 16, 0.2);
    CHECK(max_diff(r.model, want) < 2e-6);
    CHECK(max_diff(r.model, model_state(*build_model(job.model, kSeed))) > 1e-3);
  }
}

TEST_CASE("psl in one process: the workers' partial gradients add up to the whole loss's gradient") {
  const std::string data = "fmnist:limit=200";
  const Job job = job_of("psl", "psnet", "psl",
                         {{"steps", "2"}, {"batch_size", "50"}, {"batches", "sequential"}, {"optimizer", "sgd"},
                          {"lr", "0.05"}, {"eval_every", "0"}});
  auto coordinator = coordinator_of(job);
  const auto r = run(*coordinator, job, full_workers("synthetic:n=10", 3), data);
  REQUIRE(r.lines.size() == 1);
  CHECK(metric<int64_t>(r.lines[0], "workers_ok") == 3);
  CHECK(max_diff(r.model, train_plain(data, "psnet", "psl", 2, 50, 0.05)) < 1e-5);
}

TEST_CASE("the local cohort carries parts both ways, fails a worker that left and cancels on request") {
  // A worker half that sends a part, waits for the coordinator's answer to it, and so on.
  struct Echo : WorkerStrategy {
    explicit Echo(const Job&) {}
    Message handle(const Message& request, WorkerContext&, WorkerLink& link) override {
      const auto n = static_cast<int64_t>(request.metric("parts"));
      for (int64_t i = 0; i < n; ++i) {
        Message part("echo.part");
        part.step = static_cast<uint64_t>(i);
        part.tensors.emplace_back("x", at::full({4}, static_cast<float>(i)));
        link.send(part);
        const Message answer = link.receive(std::chrono::seconds(10));
        FEDRA_REQUIRE(answer.step == part.step, "answer for {} to part {}", answer.step, i);
      }
      return Message("echo.done");
    }
  };
  StrategyRegistry registry;
  StrategyInfo info;
  info.name = "echo";
  info.make_coordinator = [](const Job&) -> std::unique_ptr<CoordinatorStrategy> { return nullptr; };
  info.make_worker = [](const Job& job) -> std::unique_ptr<WorkerStrategy> { return std::make_unique<Echo>(job); };
  registry.add(info);
  const Job job = job_of("echo", "mlp:1-1", "ce", {});
  LocalCohort cohort(job, registry, full_workers(kData, 3));
  CHECK(cohort.size() == 3);
  Message go("echo.go");
  go.metrics["parts"] = 5;

  SUBCASE("every part is answered, the tensors arrive intact") {
    std::map<std::string, int> parts, replies;
    Exchange ex;
    ex.deadline = [] { return Clock::now() + std::chrono::seconds(20); };
    ex.on_part = [&](const WorkerInfo& w, Message&& m) {
      CHECK(m.tensor("x").sum().item<double>() == 4.0 * static_cast<double>(m.step));
      ++parts[w.name];
      CHECK(cohort.post(w.id, m));
    };
    ex.on_reply = [&](const WorkerInfo& w, Message&& m) {
      CHECK(m.kind == "echo.done");
      ++replies[w.name];
    };
    const auto failures = cohort.exchange({{1, go}, {2, go}, {3, go}}, ex);
    CHECK(failures.empty());
    CHECK(parts == std::map<std::string, int>{{"worker-0", 5}, {"worker-1", 5}, {"worker-2", 5}});
    CHECK(replies.size() == 3);
    CHECK(cohort.bytes_up() > 15 * 16);
    CHECK(cohort.bytes_down() > 15 * 16);
  }
  SUBCASE("a worker that left fails at once; one cancelled mid-exchange fails with the reason") {
    cohort.disconnect("worker-1");
    CHECK(cohort.size() == 2);
    CHECK(cohort.workers_by_name().back().name == "worker-2");
    Exchange ex;
    ex.deadline = [] { return Clock::now() + std::chrono::seconds(20); };
    ex.on_reply = [](const WorkerInfo&, Message&&) {};
    ex.on_part = [&](const WorkerInfo& w, Message&& m) {
      if (w.name == "worker-0") cohort.cancel(w.id, "enough");
      else cohort.post(w.id, m);
    };
    const auto failures = cohort.exchange({{1, go}, {2, go}, {3, go}}, ex);
    REQUIRE(failures.size() == 2);
    CHECK(failures[0].name == "worker-1");  // named, though it left
    CHECK(failures[0].kind == ErrorKind::kDisconnected);
    CHECK(failures[1].name == "worker-0");
    CHECK(failures[1].message == "cancelled by the coordinator: enough");
  }
  SUBCASE("a worker that does not answer in time fails with kOverloaded") {
    Exchange ex;
    const auto deadline = Clock::now() + std::chrono::milliseconds(300);
    ex.deadline = [deadline] { return deadline; };
    ex.on_reply = [](const WorkerInfo&, Message&&) {};
    ex.on_part = [](const WorkerInfo&, Message&&) {};  // never answered
    const auto failures = cohort.exchange({{1, go}}, ex);
    REQUIRE(failures.size() == 1);
    CHECK(failures[0].kind == ErrorKind::kOverloaded);
  }
}
