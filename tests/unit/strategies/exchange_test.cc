// Every strategy's two halves exchanging real frames in one process (LocalCohort): no sockets,
// no child processes, each checked against the same training done without Fedra.
#include "tests/testing.h"

#include <cmath>
#include <map>

#include <torch/torch.h>

#include "core/batching.h"
#include "core/local_cohort.h"
#include "core/model.h"
#include "core/partition.h"
#include "core/training.h"
#include "strategies/builtin.h"
#include "strategies/fedavg/fedavg.h"
#include "tests/test_util.h"

using namespace fedra;
using namespace fedra::test;

namespace {

constexpr uint64_t kSeed = 5;

std::vector<LocalWorker> iid_workers(const std::string& data, int64_t n) {
  const Dataset all = load_dataset(data, Splits::kTrain).train;
  const Partition p = partition_dataset(all.targets, all.num_classes, "iid", n, kSeed);
  std::vector<LocalWorker> out;
  for (int64_t k = 0; k < n; ++k) {
    out.push_back({fmt::format("worker-{}", k), std::make_shared<Dataset>(subset(all, p.clients[static_cast<size_t>(k)]))});
  }
  return out;
}

std::vector<LocalWorker> full_workers(const std::string& data, int64_t n) {
  auto all = std::make_shared<Dataset>(load_dataset(data, Splits::kTrain).train);
  std::vector<LocalWorker> out;
  for (int64_t k = 0; k < n; ++k) out.push_back({fmt::format("worker-{}", k), all});
  return out;
}

Job job_of(const std::string& strategy, const std::string& model, const std::string& loss,
           std::map<std::string, std::string> options) {
  Job job;
  job.strategy = strategy;
  job.model = model;
  job.loss = loss;
  job.seed = kSeed;
  job.options = OptionMap(strategy, std::move(options));
  return job;
}

struct InProcessRun {
  std::vector<Metrics> lines;
  NamedTensors model;  // OUT/model.bin, when the strategy writes one
};

// Runs `coordinator` against worker halves built from the registry, as `fedra simulate` would.
InProcessRun run(CoordinatorStrategy& coordinator, const Job& job, std::vector<LocalWorker> workers,
                 const std::string& dataset = "") {
  StrategyRegistry registry;
  register_builtin_strategies(registry);
  LocalCohort cohort(job, registry, std::move(workers));
  TempDir dir;
  InProcessRun r;
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

template <class T>
T metric(const Metrics& line, const std::string& name) {
  for (const auto& [k, v] : line) {
    if (k == name) return std::get<T>(v);
  }
  FAIL("no metric " << name);
  return T{};
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

// FedAvg's coordinator with its global model in view.
struct Probe : fedavg::FedAvgCoordinator {
  using FedAvgCoordinator::FedAvgCoordinator;
  using FedAvgCoordinator::global;
};

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
    torch::nn::Sequential local = build_model(job.model, job.seed);
    TrainOptions t;
    t.batch_size = 16;
    t.optim.lr = 0.1;
    t.optim.momentum = 0.9;
    t.loss = "bce";
    t.seed = worker_seed(job.seed, 1, workers[k].name);
    train_local(local, *workers[k].data, t);
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
  registry.get("fedavg").make_coordinator(job)->run(cohort, ctx);
  REQUIRE(lines.size() == 1);
  CHECK(metric<std::string>(lines[0], "status") == "failed");
  CHECK(metric<int64_t>(lines[0], "workers_failed") == 1);
  CHECK(contains(metric<std::string>(lines[0], "reason"), "rejected update from worker-1: its 'fedavg.fit_result' lacks the metric 'train_loss'"));
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
    CHECK(failures[0].name == "worker #2");
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
