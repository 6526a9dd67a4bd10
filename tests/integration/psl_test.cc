// psl end to end: real coordinator and worker processes over loopback TCP.
#include "tests/testing.h"

#include <torch/torch.h>

#include "core/model/model.h"
#include "tests/test_util.h"

using namespace fedra;
using namespace fedra::test;

TEST_CASE("psl over 3 workers trains exactly like the whole PSL loss in one process") {
  TempDir dir;
  const std::vector<std::string> common = {"--model", "psnet", "--loss", "psl", "--seed", "5",
                                           "--dataset", "fmnist:limit=400,test_limit=500", "--threads", "1"};
  std::vector<std::string> one = {"train", "--epochs", "1", "--max-steps", "4", "--batch-size", "50", "--batches",
                                  "sequential", "--optimizer", "sgd", "--lr", "0.1", "--momentum", "0.9",
                                  "--out", dir / "one"};
  one.insert(one.end(), common.begin(), common.end());
  REQUIRE(run_fedra(one, dir / "one.log", std::chrono::seconds(60)) == 0);

  std::vector<std::string> split = {"simulate", "--strategy", "psl", "--workers", "3", "--worker-threads", "1",
                                    "--psl.steps", "4", "--psl.steps_per_round", "2", "--psl.batch_size", "50",
                                    "--psl.batches", "sequential", "--psl.optimizer", "sgd", "--psl.lr", "0.1",
                                    "--psl.momentum", "0.9", "--out", dir / "psl"};
  split.insert(split.end(), common.begin(), common.end());
  const int code = run_fedra(split, dir / "psl.log", std::chrono::seconds(120));
  const std::string log = read_file(dir / "psl.log");
  INFO(log);
  REQUIRE(code == 0);
  CHECK(contains(log, "over 7 tower(s)"));  // the assignment for 3 workers
  const NamedTensors want = load_model_file(dir / "one/model.bin");
  const NamedTensors got = load_model_file(dir / "psl/model.bin");
  REQUIRE(got.size() == want.size());
  const auto init = model_state(*build_model("psnet", 5));
  for (size_t i = 0; i < got.size(); ++i) {
    INFO(got[i].first);
    CHECK(got[i].first == want[i].first);
    CHECK((got[i].second - want[i].second).abs().max().item<double>() < 1e-5);
    CHECK(!torch::equal(got[i].second, init[i].second));
  }
  const auto lines = read_jsonl(dir / "psl/metrics.jsonl");
  REQUIRE(lines.size() == 2);
  CHECK(lines[1]["bytes_per_step"].get<double>() > 0);
}

TEST_CASE("psl with data on the workers learns, and refuses a model without towers") {
  TempDir dir;
  const int code = run_fedra({"simulate", "--strategy", "psl", "--workers", "2", "--worker-threads", "1",
                              "--threads", "1", "--model", "psnet", "--loss", "psl",
                              "--dataset", "fmnist:limit=2000,test_limit=1000", "--psl.data", "worker",
                              "--psl.steps", "100", "--psl.steps_per_round", "50", "--psl.batch_size", "50", "--psl.lr", "0.005",
                              "--out", dir / "w"},
                             dir / "w.log", std::chrono::seconds(120));
  INFO(read_file(dir / "w.log"));
  REQUIRE(code == 0);
  const auto lines = read_jsonl(dir / "w/metrics.jsonl");
  REQUIRE(lines.size() == 2);
  CHECK(lines[1]["train_loss"].get<double>() < lines[0]["train_loss"].get<double>());
  CHECK(lines[1]["test_accuracy"].get<double>() > 0.25);  // chance is 0.1

  const int bad = run_fedra({"simulate", "--strategy", "psl", "--workers", "1", "--model", "lenet5", "--loss", "psl",
                             "--dataset", "fmnist:limit=100", "--out", dir / "bad"},
                            dir / "bad.log", std::chrono::seconds(60));
  CHECK(bad != 0);
  CHECK(contains(read_file(dir / "bad.log"), "needs the psnet model"));
}
