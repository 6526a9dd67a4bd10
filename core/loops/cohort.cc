#include "core/loops/cohort.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <random>

#include <fmt/ranges.h>

namespace fedra {

std::string describe_failures(const std::vector<Failure>& failures) {
  std::vector<std::string> parts;
  for (const auto& f : failures) parts.push_back(fmt::format("{}: {}", f.name, f.message));
  return fmt::format("{}", fmt::join(parts, "; "));
}

std::vector<WorkerInfo> Cohort::workers_by_name() const {
  auto out = workers();
  std::sort(out.begin(), out.end(), [](const WorkerInfo& a, const WorkerInfo& b) { return a.name < b.name; });
  return out;
}

std::vector<WorkerId> Cohort::sample(double fraction, size_t min_count, uint64_t seed) const {
  std::vector<WorkerInfo> candidates = workers();
  std::sort(candidates.begin(), candidates.end(), [](const WorkerInfo& a, const WorkerInfo& b) {
    return a.name != b.name ? a.name < b.name : a.id < b.id;
  });
  std::vector<WorkerId> ids;
  for (const auto& w : candidates) ids.push_back(w.id);
  const auto wanted = static_cast<size_t>(std::ceil(fraction * static_cast<double>(ids.size()) - 1e-9));
  const size_t k = std::min(ids.size(), std::max(wanted, min_count));
  std::mt19937_64 rng(seed);
  std::shuffle(ids.begin(), ids.end(), rng);
  ids.resize(k);
  std::sort(ids.begin(), ids.end());
  return ids;
}

std::vector<Failure> Cohort::request_all(std::vector<Instruction> instructions, Deadline deadline,
                                         const ReplyHandler& on_reply) {
  Exchange handlers;
  handlers.on_reply = on_reply;
  handlers.deadline = [deadline] { return deadline; };
  return exchange(std::move(instructions), handlers);
}

uint64_t Cohort::bytes_up() const {
  uint64_t n = 0;
  for (const auto& w : bytes_by_worker()) n += w.up;
  return n;
}

uint64_t Cohort::bytes_down() const {
  uint64_t n = 0;
  for (const auto& w : bytes_by_worker()) n += w.down;
  return n;
}

Message Cohort::request(WorkerId worker, Message message, Deadline deadline) {
  std::optional<Message> reply;
  std::vector<Instruction> one;
  one.push_back({worker, std::move(message)});
  auto failures = request_all(std::move(one), deadline,
                              [&](const WorkerInfo&, Message&& r) { reply = std::move(r); });
  if (!failures.empty()) {
    throw Error(failures.front().kind,
                fmt::format("{}: {}", failures.front().name, failures.front().message));
  }
  FEDRA_ASSERT(reply.has_value(), "request finished without a reply or a failure");
  return std::move(*reply);
}

}  // namespace fedra
