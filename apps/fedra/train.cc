#include "apps/fedra/train.h"

#include <chrono>
#include <filesystem>

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "apps/fedra/cli.h"
#include "core/data/batching.h"
#include "core/data/dataset.h"
#include "core/model/export.h"
#include "core/model/model.h"
#include "core/model/script_model.h"
#include "core/system/process.h"
#include "core/training/optimizer.h"
#include "core/training/training.h"

namespace fedra::cli {

namespace {

using Clock = std::chrono::steady_clock;
using Seconds = std::chrono::duration<double>;

}  // namespace

int run_training(const boost::program_options::variables_map& vm, const StopSignal& stop) {
  const std::string spec = vm["model"].as<std::string>();
  const std::string loss = vm["loss"].as<std::string>();
  const std::string dataset = vm["dataset"].as<std::string>();
  const auto seed = static_cast<uint64_t>(vm["seed"].as<int64_t>());
  const int64_t epochs = vm["epochs"].as<int64_t>();
  const int64_t batch = vm["batch-size"].as<int64_t>();
  const int64_t max_steps = vm["max-steps"].as<int64_t>();
  FEDRA_REQUIRE(epochs >= 1, "--epochs must be >= 1, got {}", epochs);
  FEDRA_REQUIRE(max_steps >= 0, "--max-steps must be >= 0, got {}", max_steps);
  check_loss_name(loss);
  OptimizerConfig oc;
  oc.name = vm["optimizer"].as<std::string>();
  oc.lr = vm["lr"].as<double>();
  oc.momentum = vm["momentum"].as<double>();
  oc.weight_decay = vm["weight-decay"].as<double>();
  oc.validate();
  const std::string batches = vm["batches"].as<std::string>();
  FEDRA_REQUIRE(batches == "shuffle" || batches == "sequential", "--batches must be shuffle or sequential, got '{}'",
                batches);
  const int threads = configure_threads(std::max(0, vm["threads"].as<int>()));
  const std::string out_dir = vm.count("out") ? vm["out"].as<std::string>() : std::string();

  const auto t_start = Clock::now();
  DatasetSplits data = load_dataset(dataset);
  FEDRA_REQUIRE(data.train.size() > 0, "dataset '{}' has no training examples", dataset);
  check_model_fits(spec, seed, data.train, loss, fmt::format("the data of '{}'", dataset));
  torch::nn::Sequential model = build_model(spec, seed);
  ModuleOptimizer opt(*model, oc);
  BatchOrder order(batches, batch, seed, "central");
  RunRecorder recorder(out_dir);
  spdlog::info("training {} ({} weights) on {} ({} examples) in one process, {} thread(s), {} epoch(s)",
               spec, count_parameters(*model), dataset, data.train.size(), threads, epochs);

  RunSummary summary;
  summary.strategy = "train";
  summary.config = resolved(vm, StrategyRegistry{});
  summary.status = "completed";
  const int64_t per_epoch = steps_per_epoch(data.train.size(), batch);
  const int64_t steps = max_steps > 0 ? std::min(max_steps, per_epoch) : per_epoch;
  int64_t step = 0;
  for (int64_t epoch = 1; epoch <= epochs && !stop.requested(); ++epoch) {
    const auto t0 = Clock::now();
    auto last_note = t0;
    double loss_sum = 0, correct = 0, examples = 0;
    for (int64_t s = 0; s < steps && !stop.requested(); ++s, ++step) {
      auto [x, y] = order.batch(data.train, (epoch - 1) * per_epoch + s);
      opt.zero_grad();
      at::Tensor logits = model->forward(x);
      at::Tensor l = compute_loss(logits, y, loss);
      l.backward();
      opt.step();
      const auto n = static_cast<double>(x.size(0));
      loss_sum += l.item<double>() * n;
      if (loss == "ce") correct += logits.argmax(1).eq(y).sum().item<double>();
      examples += n;
      if (Seconds(Clock::now() - last_note).count() > 15) {
        last_note = Clock::now();
        spdlog::info("epoch {}: step {}/{}, train_loss {:.4f}", epoch, s + 1, steps, loss_sum / examples);
      }
    }
    const double fit_s = Seconds(Clock::now() - t0).count();
    Metrics line;
    line.emplace_back("strategy", std::string("train"));
    line.emplace_back("round", epoch);
    line.emplace_back("epoch", epoch);
    line.emplace_back("status", std::string(stop.requested() ? "interrupted" : "ok"));
    line.emplace_back("train_loss", examples > 0 ? loss_sum / examples : std::nan(""));
    if (loss == "ce") line.emplace_back("train_accuracy", examples > 0 ? correct / examples : std::nan(""));
    line.emplace_back("train_examples", static_cast<int64_t>(examples));
    line.emplace_back("steps", steps);
    line.emplace_back("fit_s", fit_s);
    line.emplace_back("step_ms", 1000 * fit_s / static_cast<double>(std::max<int64_t>(1, steps)));
    line.emplace_back("examples_per_s", examples / std::max(fit_s, 1e-9));
    std::string score;
    if (data.test.size() > 0) {
      const EvalStats e = evaluate_model(model, data.test, loss);
      for (const auto& [key, value] : eval_metrics(e)) {
        line.emplace_back(key, value);
        score += fmt::format("  {} {:.4f}", key, value);
      }
    }
    line.emplace_back("bytes_up", int64_t{0});
    line.emplace_back("bytes_down", int64_t{0});
    line.emplace_back("peak_rss_bytes", static_cast<int64_t>(peak_rss_bytes()));
    line.emplace_back("elapsed_s", Seconds(Clock::now() - t_start).count());
    recorder.record_round(line);
    spdlog::info("epoch {}/{}{}  train_loss {:.4f}  {:.1f} s ({:.0f} examples/s)", epoch, epochs, score,
                 examples > 0 ? loss_sum / examples : 0.0, fit_s, examples / std::max(fit_s, 1e-9));
  }
  if (stop.requested()) summary.status = "interrupted";
  summary.elapsed_s = Seconds(Clock::now() - t_start).count();
  summary.peak_rss_bytes = peak_rss_bytes();
  if (!out_dir.empty()) {
    save_trained_model(out_dir, model);
    recorder.write_summary(summary);
    spdlog::info("results in {}", out_dir);
  }
  return stop.requested() ? 130 : 0;
}

}  // namespace fedra::cli
