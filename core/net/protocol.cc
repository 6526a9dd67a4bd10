#include "core/net/protocol.h"

#include <algorithm>

namespace fedra::protocol {

namespace {
constexpr std::string_view kOptionPrefix = "option.";
}

bool same_secret(const std::string& a, const std::string& b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < std::max(a.size(), b.size()); ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff |= static_cast<unsigned char>(x ^ y);
  }
  return diff == 0;
}

Message make_welcome(const Job& job, uint64_t worker_id) {
  Message m(kWelcome);
  m.sender = kCoordinatorName;
  m.options["strategy"] = job.strategy;
  m.options["model"] = job.model;
  m.options["loss"] = job.loss;
  m.options["seed"] = std::to_string(job.seed);
  m.options["worker_id"] = std::to_string(worker_id);
  for (const auto& [k, v] : job.options.values()) m.options[std::string(kOptionPrefix) + k] = v;
  return m;
}

Job job_from_welcome(const Message& welcome) {
  FEDRA_REQUIRE(welcome.kind == kWelcome, "expected '{}' from the coordinator, got '{}'", kWelcome,
                welcome.kind);
  Job job;
  job.strategy = welcome.option("strategy");
  job.model = welcome.option("model");
  job.loss = welcome.option("loss");
  job.seed = std::stoull(welcome.option("seed"));
  job.options = OptionMap(job.strategy);
  for (const auto& [k, v] : welcome.options) {
    if (k.rfind(kOptionPrefix, 0) == 0) job.options.set(k.substr(kOptionPrefix.size()), v);
  }
  return job;
}

}  // namespace fedra::protocol
