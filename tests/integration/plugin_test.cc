// Strategy plugins: loading, listing, refusals, and the fedmedian example against a poisoned worker.
#include "tests/testing.h"

#include "tests/test_util.h"

using namespace fedra;
using namespace fedra::test;

TEST_CASE("fedra strategies lists the built-ins and a loaded plugin") {
  TempDir dir;
  REQUIRE(run_fedra({"strategies", "--plugin", FEDMEDIAN_PLUGIN}, dir / "log", std::chrono::seconds(30)) == 0);
  const std::string out = read_file(dir / "log");
  for (const char* name : {"fedavg ", "gradsum ", "split ", "psl ", "fedmedian "}) CHECK(contains(out, name));
  CHECK(contains(out, "coordinate-wise median"));
}

TEST_CASE("bad plugins are refused with what is wrong") {
  TempDir dir;
  auto refused = [&](std::vector<std::string> args, const std::string& want) {
    const int code = run_fedra(args, dir / "log", std::chrono::seconds(30));
    const std::string out = read_file(dir / "log");
    INFO(out);
    CHECK(code == 2);
    CHECK(contains(out, want));
  };
  refused({"strategies", "--plugin", dir / "missing.so"}, "not found");
  refused({"strategies", "--plugin", NOT_A_PLUGIN}, "is not a Fedra plugin: it does not export fedra_plugin_abi()");
  refused({"strategies", "--plugin", BAD_ABI_PLUGIN},
          "was built against Fedra 9.9.9 (plugin ABI 999); this is Fedra");
  refused({"strategies", "--plugin", FEDMEDIAN_PLUGIN, "--plugin", FEDMEDIAN_PLUGIN},
          "registers strategy 'fedmedian', which is already registered");
}

TEST_CASE("fedmedian keeps training with a worker sending huge updates; the mean does not") {
  TempDir dir;
  auto run = [&](const std::string& aggregate) {
    const std::string out = dir / aggregate;
    const int code = run_fedra({"simulate", "--plugin", FEDMEDIAN_PLUGIN, "--strategy", "fedmedian", "--workers", "4",
                                "--dataset", "fmnist:limit=8000,test_limit=2000", "--threads", "1",
                                "--fedmedian.rounds", "3", "--fedmedian.poison", "worker-3",
                                "--fedmedian.aggregate", aggregate, "--out", out},
                               dir / (aggregate + ".log"), std::chrono::seconds(120));
    INFO(read_file(dir / (aggregate + ".log")));
    CHECK(code == 0);
    return read_jsonl(out + "/metrics.jsonl");
  };
  const auto median = run("median");
  const auto mean = run("mean");
  REQUIRE(median.size() == 3);
  REQUIRE(mean.size() == 3);
  const double median_acc = median[2]["test_accuracy"].get<double>();
  MESSAGE("poisoned worker-3 (noise, sd 1000), test accuracy after 3 rounds: median " << median_acc << ", mean "
                                                                                     << mean[2]["test_accuracy"].get<double>()
                                                                                     << " (test loss "
                                                                                     << mean[2]["test_loss"].get<double>() << ")");
  CHECK(median_acc > 0.7);
  CHECK(median[2]["status"] == "ok");
  // The mean takes a quarter of the noise in every round: the model is wrecked.
  CHECK(mean[2]["test_loss"].get<double>() > 100);
  CHECK(mean[2]["test_accuracy"].get<double>() < 0.4);
}
