#include "tests/testing.h"

#include <cmath>

#include <torch/torch.h>

#include "core/kit/message.h"

using namespace fedra;

namespace {

Message wire_round_trip(const Message& m) {
  const auto bytes = transport::encode(to_envelope(m), transport::Limits{}).to_bytes();
  return from_envelope(transport::decode(
      transport::InFrame::from_bytes(bytes.data(), bytes.size(), transport::Limits{}),
      transport::Limits{}));
}

}  // namespace

TEST_CASE("tensors of every torch dtype survive the wire unchanged") {
  const std::vector<c10::ScalarType> types = {
      torch::kFloat32, torch::kFloat64, torch::kFloat16, torch::kBFloat16,
      torch::kInt8,    torch::kUInt8,   torch::kInt16,   torch::kInt32,
      torch::kInt64,   torch::kBool,    torch::kComplexFloat, torch::kComplexDouble};
  torch::manual_seed(0);
  for (auto type : types) {
    CAPTURE(c10::toString(type));
    Message m("test", 4);
    at::Tensor t = (torch::randn({6, 5}) * 50).to(type);
    m.tensors.emplace_back("t", t);
    m.tensors.emplace_back("empty", torch::empty({0, 3}, type));
    m.tensors.emplace_back("scalar", torch::ones({}, type));
    const Message got = wire_round_trip(m);
    REQUIRE(got.tensors.size() == 3);
    CHECK((got.tensor("t").scalar_type() == type));
    CHECK(torch::equal(got.tensor("t"), t));
    CHECK(got.tensor("empty").sizes() == t.new_empty({0, 3}).sizes());
    CHECK(got.tensor("scalar").dim() == 0);
    CHECK(torch::equal(got.tensor("scalar"), torch::ones({}, type)));
  }
}

TEST_CASE("non-contiguous tensors are sent as their values") {
  at::Tensor base = torch::arange(24, torch::kFloat32).reshape({4, 6});
  Message m("test");
  m.tensors.emplace_back("transposed", base.t());
  m.tensors.emplace_back("sliced", base.slice(1, 1, 5, 2));
  const Message got = wire_round_trip(m);
  CHECK(torch::equal(got.tensor("transposed"), base.t()));
  CHECK(torch::equal(got.tensor("sliced"), base.slice(1, 1, 5, 2)));
}

TEST_CASE("received tensors wrap the frame buffer, which lives as long as any of them") {
  Message m("test");
  m.tensors.emplace_back("a", torch::arange(4096, torch::kFloat32));
  m.tensors.emplace_back("b", torch::arange(4096, torch::kFloat32) * 2);
  at::Tensor kept;
  {
    Message got = wire_round_trip(m);
    // Both tensors live in one received buffer: b starts right after a (plus Cap'n Proto's
    // list header), not in a copy.
    const auto* a = static_cast<const char*>(got.tensor("a").data_ptr());
    const auto* b = static_cast<const char*>(got.tensor("b").data_ptr());
    CHECK(std::abs(b - a) < 4096 * 4 + 256);
    kept = got.tensor("b");
  }
  CHECK(torch::equal(kept, torch::arange(4096, torch::kFloat32) * 2));
}

TEST_CASE("missing entries are named in the error") {
  Message m("fedavg.fit");
  m.metrics["num_examples"] = 3;
  CHECK(m.metric("num_examples") == 3);
  CHECK_THROWS_WITH_AS(m.metric("loss"), "message 'fedavg.fit' has no metric 'loss'", fedra::Error);
  CHECK_THROWS_WITH_AS(m.tensor("w"), "message 'fedavg.fit' has no tensor 'w'", fedra::Error);
  CHECK_THROWS_WITH_AS(m.option("lr"), "message 'fedavg.fit' has no option 'lr'", fedra::Error);
  CHECK(m.option_or("lr", "0.1") == "0.1");
}

namespace {

struct Counts {
  int64_t examples = 0;
  uint32_t round = 0;
  double loss = 0;
  template <class F>
  void metrics(F&& f) {
    f("examples", examples, Field::kRequired);
    f("round", round);
    f("loss", loss, Field::kRequired);
  }
};

std::string decode_error(std::map<std::string, double> metrics) {
  Message m("demo.result");
  m.metrics = std::move(metrics);
  Counts c;
  try {
    get_metrics(c, m, "worker w's");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("a typed message's metrics are refused by name when they are no number of the field's kind") {
  CHECK(decode_error({{"examples", 5}, {"round", 3}, {"loss", 0.5}}) == "");
  // A count that is fractional, beyond its type or beyond what a double holds exactly is refused,
  // not truncated (2.5 -> 2) or wrapped (1e19 -> -9.2e18).
  CHECK(decode_error({{"examples", 2.5}, {"loss", 0.5}}) ==
        "worker w's 'demo.result' has the metric 'examples' = 2.5, not a whole number in "
        "[-9.223372036854776e+18, 9007199254740992]");
  CHECK(decode_error({{"examples", 1e19}, {"loss", 0.5}}).find("'examples' = 1e+19, not a whole number") !=
        std::string::npos);
  CHECK(decode_error({{"examples", 1}, {"round", -1}, {"loss", 0.5}}).find("'round' = -1, not a whole number in "
                                                                           "[0, 4294967295]") != std::string::npos);
  // A loss that is not finite is refused like a tensor that is not.
  CHECK(decode_error({{"examples", 1}, {"loss", std::nan("")}}) ==
        "worker w's 'demo.result' has the metric 'loss' = nan, not a finite number");
  CHECK(decode_error({{"examples", 1}, {"loss", HUGE_VAL}}).find("'loss' = inf, not a finite number") !=
        std::string::npos);
}
