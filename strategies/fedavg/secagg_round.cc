// Secure aggregation's coordinator half (strategies/fedavg/secagg.h has the protocol).
#include <algorithm>
#include <set>

#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include <torch/torch.h>

#include "strategies/fedavg/secagg.h"
#include "strategies/fedavg/secagg_messages.h"

namespace fedra::fedavg {

namespace {

using namespace secagg_wire;

size_t word_bytes(const secagg::Encoding& e) { return static_cast<size_t>(e.bits / 8); }

const char* step_kind(int step) {
  static const char* kinds[] = {SecAggKeys::kKind, SecAggShares::kKind, SecAggMasked::kKind, SecAggReveal::kKind, "(none)"};
  return kinds[step];
}

}  // namespace

SecAggRound::SecAggRound(uint32_t round, const SecAggOptions& options, const NamedTensors& global,
                         std::map<WorkerId, std::pair<std::string, double>> asked, uint64_t graph_seed)
    : round_(round),
      options_(options),
      global_(global),
      graph_seed_(graph_seed & ((uint64_t{1} << 52) - 1)) {  // exact as a double metric on the wire
  length_ = secagg_length(global);
  double total = 0;
  for (auto& [id, nw] : asked) {
    Member m;
    m.id = id;
    m.name = nw.first;
    m.weight = nw.second;
    FEDRA_REQUIRE(m.weight >= 1, "secure aggregation: worker {} has weight {} (no examples?)", m.name, m.weight);
    total += m.weight;
    members_.emplace(id, std::move(m));
  }
  encoding_ = secagg::choose_encoding(static_cast<int>(options_.secagg_bits()), options_.secagg_clip(),
                                      std::max(total, 1.0));
  ring_.assign((static_cast<size_t>(length_) * word_bytes(encoding_) + 7) / 8, 0);
}

SecAggIns SecAggRound::instruction(WorkerId w, double training_s) const {
  SecAggIns s;
  s.on = true;
  s.encoding = encoding_;
  s.weight = members_.at(w).weight;
  s.timeout_s = options_.secagg_timeout();
  // The roster comes once every worker has trained (or the round's time is up).
  s.first_wait_s = training_s + options_.secagg_timeout();
  return s;
}

std::vector<WorkerId> SecAggRound::delivered(Step step) const {
  std::vector<WorkerId> out;
  for (const auto& [id, m] : members_) {
    if (static_cast<int>(m.next) > static_cast<int>(step)) out.push_back(id);
  }
  return out;
}

std::vector<WorkerId> SecAggRound::in_step(Step reached) const {
  std::vector<WorkerId> out;
  for (const auto& [id, m] : members_) {
    if (m.alive && m.next == reached) out.push_back(id);
  }
  return out;
}

SecAggRound::Member& SecAggRound::member(const WorkerInfo& w, Step expected, const std::string& kind) {
  auto it = members_.find(w.id);
  FEDRA_REQUIRE(it != members_.end(), "secure aggregation: '{}' from {}, which is not in this round", kind, w.name);
  Member& m = it->second;
  FEDRA_REQUIRE(m.alive, "secure aggregation: '{}' from {}, which this round already left out", kind, w.name);
  if (m.next != expected || step_ != expected) {
    refuse(fmt::format("secure aggregation refused {}: it sent '{}' out of turn (expected '{}'): a replayed or "
                       "out-of-order message",
                       w.name, kind, step_kind(static_cast<int>(m.next))));
  }
  return m;
}

void SecAggRound::refuse(const std::string& why) {
  spdlog::warn("round {}: {}", round_, why);
  ++result_.refused;
  FEDRA_FAIL("{}", why);  // the exchange fails this worker's request; on_failure marks it gone
}

void SecAggRound::on_part(const WorkerInfo& w, Message&& msg) {
  if (msg.round != round_) {
    refuse(fmt::format("secure aggregation refused {}: its '{}' is of round {}, this is round {} (a replayed message)",
                       w.name, msg.kind, msg.round, round_));
  }
  if (msg.kind == SecAggKeys::kKind) {
    Member& m = member(w, Step::kKeys, msg.kind);
    const SecAggKeys keys = SecAggKeys::decode(msg, w.name);
    m.c_pk = keys.c_pk;
    m.s_pk = keys.s_pk;
    m.next = Step::kShares;
  } else if (msg.kind == SecAggShares::kKind) {
    Member& m = member(w, Step::kShares, msg.kind);
    SecAggShares shares = SecAggShares::decode(msg, w.name);
    if (shares.to != m.neighbours) {
      refuse(fmt::format("secure aggregation refused {}: it sent shares for workers {}, its neighbours are {}", w.name,
                         fmt::join(shares.to, ","), fmt::join(m.neighbours, ",")));
    }
    m.b_commit = shares.b_commit;
    for (size_t i = 0; i < shares.to.size(); ++i) m.sealed.emplace_back(shares.to[i], std::move(shares.sealed[i]));
    m.next = Step::kMasked;
  } else if (msg.kind == SecAggMasked::kKind) {
    Member& m = member(w, Step::kMasked, msg.kind);
    SecAggMasked masked = SecAggMasked::decode(std::move(msg));
    const at::Tensor& y = masked.y;
    const auto want = encoding_.bits == 32 ? at::kInt : at::kLong;
    if (y.scalar_type() != want || y.dim() != 1 || y.numel() != length_) {
      refuse(fmt::format("secure aggregation refused {}: its masked input has {} {} elements, the model {} ({})",
                            w.name, y.numel(), c10::toString(y.scalar_type()), length_, c10::toString(want)));
    }
    const at::Tensor c = y.contiguous();
    if (encoding_.bits == 32) {
      auto* sum = reinterpret_cast<uint32_t*>(ring_.data());
      const auto* add = reinterpret_cast<const uint32_t*>(c.data_ptr<int32_t>());
      for (int64_t i = 0; i < length_; ++i) sum[i] += add[i];
    } else {
      const auto* add = reinterpret_cast<const uint64_t*>(c.data_ptr<int64_t>());
      for (int64_t i = 0; i < length_; ++i) ring_[static_cast<size_t>(i)] += add[i];
    }
    const auto figure = [&masked](const char* k) { return masked.figures.count(k) ? masked.figures.at(k) : 0.0; };
    result_.clipped += static_cast<size_t>(figure("secagg_clipped"));
    result_.worker_cpu_s = std::max(result_.worker_cpu_s, figure("secagg_cpu_s"));
    result_.figures.emplace_back(w.name, std::move(masked.figures));
    m.next = Step::kReveal;
  } else {
    FEDRA_FAIL("secure aggregation: unexpected '{}' from {}", msg.kind, w.name);
  }
  advance();
}

void SecAggRound::on_reply(const WorkerInfo& w, Message&& msg) {
  FEDRA_REQUIRE(msg.round == round_, "secure aggregation refused {}: its '{}' is of round {}, this is round {}", w.name,
                msg.kind, msg.round, round_);
  FEDRA_REQUIRE(msg.kind == SecAggReveal::kKind, "secure aggregation: {} ended its round with '{}', not '{}'", w.name,
                msg.kind, SecAggReveal::kKind);
  Member& m = member(w, Step::kReveal, msg.kind);
  const SecAggReveal reveal = SecAggReveal::decode(msg, w.name);
  const std::vector<WorkerId>& b_of = reveal.b_of;
  const std::vector<WorkerId>& s_of = reveal.s_of;
  for (size_t i = 0; i < b_of.size() + s_of.size(); ++i) {
    const bool is_b = i < b_of.size();
    const WorkerId owner = is_b ? b_of[i] : s_of[i - b_of.size()];
    const secagg::Share share = is_b ? reveal.b_shares[i] : reveal.s_shares[i - b_of.size()];
    auto it = members_.find(owner);
    const bool mine = owner == m.id && is_b;
    const bool asked = it != members_.end() &&
                       (mine || std::binary_search(m.neighbours.begin(), m.neighbours.end(), owner)) &&
                       (is_b ? std::binary_search(u3_.begin(), u3_.end(), owner)
                             : std::binary_search(u2_.begin(), u2_.end(), owner) &&
                                   !std::binary_search(u3_.begin(), u3_.end(), owner));
    if (!asked || share.x != m.id) {
      refuse(fmt::format("secure aggregation refused {}: it revealed a share of worker #{}'s {} it was not asked for",
                            w.name, owner, is_b ? "mask seed" : "key"));
    }
    (is_b ? it->second.b_shares : it->second.s_shares)[m.id] = share;
  }
  m.next = Step::kDone;
  if (in_step(Step::kReveal).empty() && step_ == Step::kReveal) finish();
}

void SecAggRound::on_failure(const Failure& f) {
  auto it = members_.find(f.worker);
  if (it == members_.end() || !it->second.alive) return;
  Member& m = it->second;
  m.alive = false;
  if (m.next != Step::kDone) {
    spdlog::warn("round {}: secure aggregation goes on without {} (it failed before '{}': {})", round_, m.name,
                 step_kind(static_cast<int>(m.next)), f.message);
  }
  advance();
}

bool SecAggRound::on_deadline() {
  if (step_ == Step::kDone) return false;
  std::vector<WorkerId> late = in_step(step_);
  for (WorkerId id : late) {
    const Member& m = members_.at(id);
    cohort_->cancel(id, fmt::format("secure aggregation round {}: no '{}' within the step's time; the round goes on "
                                    "without {}",
                                    round_, step_kind(static_cast<int>(m.next)), m.name));
  }
  advance();
  return step_ != Step::kDone && deadline_ > Clock::now();
}

void SecAggRound::advance() {
  if (step_ == Step::kKeys && in_step(Step::kKeys).empty()) start_shares();
  if (step_ == Step::kShares && in_step(Step::kShares).empty()) start_masked();
  if (step_ == Step::kMasked && in_step(Step::kMasked).empty()) start_reveal();
  if (step_ == Step::kReveal && in_step(Step::kReveal).empty()) finish();
}

void SecAggRound::start_shares() {
  u1_ = delivered(Step::kKeys);  // with those that failed since: they are absent from the later steps
  const size_t n = u1_.size();
  if (n < 2) return fail(fmt::format("secure aggregation needs at least 2 workers with keys; {} sent them", n));
  const size_t k_opt = static_cast<size_t>(options_.secagg_neighbours());
  const size_t k = k_opt == 0 ? n - 1 : k_opt;
  const size_t degree = secagg::neighbours(0, n, k, graph_seed_).size();
  // Each secret has degree + 1 holders: the neighbours and its owner.
  threshold_ = options_.secagg_threshold() > 0 ? static_cast<size_t>(options_.secagg_threshold()) : (degree + 1) / 2 + 1;
  if (threshold_ > degree + 1) {
    return fail(fmt::format("secure aggregation: threshold t = {} is more than the {} holders of each secret (a worker "
                            "and its {} neighbours, of {} workers); lower secagg_threshold or raise secagg_neighbours",
                            threshold_, degree + 1, degree, n));
  }
  SecAggRoster roster;
  roster.round = round_;
  roster.ids = u1_;
  for (size_t i = 0; i < n; ++i) {
    Member& m = members_.at(u1_[i]);
    roster.c_pk.push_back(m.c_pk);
    roster.s_pk.push_back(m.s_pk);
    m.neighbours.clear();
    for (size_t p : secagg::neighbours(i, n, k, graph_seed_)) m.neighbours.push_back(u1_[p]);
  }
  roster.neighbours = static_cast<int64_t>(k);
  roster.threshold = static_cast<int64_t>(threshold_);
  roster.graph_seed = graph_seed_;
  step_ = Step::kShares;
  deadline_ = Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(options_.secagg_timeout() * 1000));
  const Message m = roster.encode();
  for (WorkerId id : u1_) cohort_->post(id, m);
}

void SecAggRound::start_masked() {
  u2_ = delivered(Step::kShares);
  std::set<WorkerId> shared(u2_.begin(), u2_.end());
  for (WorkerId u : u2_) {
    const Member& m = members_.at(u);
    size_t left = 0;
    for (WorkerId v : m.neighbours) left += shared.count(v);
    if (left + 1 < threshold_) {
      return fail(fmt::format("secure aggregation: {} has {} of its {} neighbours left after sharing keys: with itself, "
                              "fewer than the threshold t = {}, so its secrets could not be rebuilt",
                              m.name, left, m.neighbours.size(), threshold_));
    }
  }
  step_ = Step::kMasked;
  deadline_ = Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(options_.secagg_timeout() * 1000));
  for (WorkerId v : u2_) {
    SecAggInbox inbox;
    inbox.round = round_;
    for (WorkerId u : members_.at(v).neighbours) {
      if (!shared.count(u)) continue;
      for (const auto& [to, bytes] : members_.at(u).sealed) {
        if (to == v) {
          inbox.from.push_back(u);
          inbox.sealed.push_back(bytes);
        }
      }
    }
    cohort_->post(v, inbox.encode());
  }
}

void SecAggRound::start_reveal() {
  u3_ = delivered(Step::kMasked);  // their inputs are in the sum, failed since or not
  if (u3_.size() < threshold_) {
    return fail(fmt::format("secure aggregation: {} of {} workers uploaded their masked input, fewer than the threshold "
                            "t = {}",
                            u3_.size(), u2_.size(), threshold_));
  }
  step_ = Step::kReveal;
  deadline_ = Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(options_.secagg_timeout() * 1000));
  const std::set<WorkerId> uploaded(u3_.begin(), u3_.end()), shared(u2_.begin(), u2_.end());
  for (WorkerId v : u3_) {
    std::vector<WorkerId> survivors, dropped;
    for (WorkerId u : members_.at(v).neighbours) {
      if (uploaded.count(u)) {
        survivors.push_back(u);
      } else if (shared.count(u)) {
        dropped.push_back(u);
      }
    }
    cohort_->post(v, SecAggUnmask{round_, std::move(survivors), std::move(dropped)}.encode());
  }
}

// A secret of `owner` from its neighbours' shares: the first t, checked against the owner's
// commitment (b) or public key (s); a failed check tries leaving each share out in turn, which
// names the worker that sent a wrong one.
secagg::Key SecAggRound::rebuild(Member& owner, bool self_mask, std::vector<std::string>& liars) {
  const auto& by_holder = self_mask ? owner.b_shares : owner.s_shares;
  std::vector<std::pair<WorkerId, secagg::Share>> shares(by_holder.begin(), by_holder.end());
  const char* what = self_mask ? "mask seed" : "key";
  if (shares.size() < threshold_) {
    FEDRA_FAIL("secure aggregation: {} share(s) of {}'s {} came back, the threshold is t = {} ({} of its neighbours "
               "dropped after uploading)",
               shares.size(), owner.name, what, threshold_, owner.neighbours.size() - shares.size());
  }
  auto verified = [&](const std::vector<secagg::Share>& use, secagg::Key& out) {
    try {
      out = secagg::combine(use, static_cast<int>(threshold_));
    } catch (const Error&) {
      return false;
    }
    return self_mask ? secagg::hash(kCommitLabel, out.data(), out.size()) == owner.b_commit
                     : secagg::public_of(out) == owner.s_pk;
  };
  std::vector<secagg::Share> all;
  for (const auto& [holder, s] : shares) all.push_back(s);
  secagg::Key secret{};
  std::vector<secagg::Share> basis = all;
  bool ok = verified(basis, secret);
  for (size_t skip = 0; !ok && skip < shares.size() && shares.size() > threshold_; ++skip) {
    basis.clear();
    for (size_t i = 0; i < shares.size(); ++i) {
      if (i != skip) basis.push_back(shares[i].second);
    }
    ok = verified(basis, secret);
  }
  if (!ok) {
    FEDRA_FAIL("secure aggregation: the shares of {}'s {} do not rebuild it (a wrong share among {} with no spare to "
               "tell which)",
               owner.name, what, shares.size());
  }
  // With the secret known, every share must lie on the polynomials through the basis.
  for (const auto& [holder, s] : shares) {
    if (!secagg::consistent(basis, static_cast<int>(threshold_), s)) {
      liars.push_back(fmt::format("{} sent a wrong share of {}'s {}", members_.at(holder).name, owner.name, what));
    }
  }
  return secret;
}

void SecAggRound::finish() {
  if (step_ == Step::kDone) return;
  step_ = Step::kDone;
  result_.dropped = members_.size() - delivered(Step::kReveal).size();
  try {
    std::vector<std::string> liars;
    const std::set<WorkerId> uploaded(u3_.begin(), u3_.end());
    for (WorkerId u : u3_) {
      const secagg::Key b = rebuild(members_.at(u), true, liars);
      secagg::add_mask(ring_.data(), static_cast<size_t>(length_), encoding_.bits, b, true);
    }
    for (WorkerId u : u2_) {
      if (uploaded.count(u)) continue;
      Member& gone = members_.at(u);
      const secagg::Key s = rebuild(gone, false, liars);
      for (WorkerId v : gone.neighbours) {
        if (!uploaded.count(v)) continue;
        // v masked with +PRG(s_uv) when v < u, -PRG when v > u: take it back out.
        const secagg::Key s_uv = secagg::agree(s, members_.at(v).s_pk, kMaskLabel);
        secagg::add_mask(ring_.data(), static_cast<size_t>(length_), encoding_.bits, s_uv, !subtracts(v, u));
      }
    }
    for (const auto& l : liars) {
      spdlog::error("round {}: secure aggregation refused a share: {}; rebuilt from the others", round_, l);
      ++result_.refused;
    }
  } catch (const Error& e) {
    return fail(e.what());
  }
  std::vector<double> sum(static_cast<size_t>(length_));
  secagg::decode(ring_.data(), sum.size(), encoding_, sum.data());
  int64_t at = 0;
  for (const auto& [name, g] : global_) {
    if (!g.is_floating_point()) continue;
    at::Tensor t = torch::from_blob(sum.data() + at, g.sizes(), at::kDouble).clone();  // double until divided
    result_.sum.emplace_back(name, std::move(t));
    at += g.numel();
  }
  for (WorkerId u : u3_) result_.weight_sum += members_.at(u).weight;
  result_.ok = true;
}

void SecAggRound::fail(const std::string& why) {
  if (result_.failure.empty()) result_.failure = why;
  result_.dropped = 0;
  for (const auto& [id, m] : members_) result_.dropped += m.alive ? 0 : 1;
  step_ = Step::kDone;
  for (auto& [id, m] : members_) {
    if (m.alive && m.next != Step::kDone) cohort_->cancel(id, why);
  }
}

std::vector<Failure> SecAggRound::run(Cohort& cohort, std::vector<Instruction> instructions, Deadline training_deadline) {
  cohort_ = &cohort;
  deadline_ = training_deadline;
  Exchange ex;
  ex.on_part = [this](const WorkerInfo& w, Message&& m) { on_part(w, std::move(m)); };
  ex.on_reply = [this](const WorkerInfo& w, Message&& m) { on_reply(w, std::move(m)); };
  ex.on_failure = [this](const Failure& f) { on_failure(f); };
  ex.deadline = [this] { return deadline_; };
  ex.on_deadline = [this] { return on_deadline(); };
  std::vector<Failure> failures = cohort.exchange(std::move(instructions), ex);
  if (!result_.ok && result_.failure.empty()) {
    result_.failure = fmt::format("secure aggregation did not finish (stopped before '{}')",
                                  step_kind(static_cast<int>(step_)));
  }
  return failures;
}

}  // namespace fedra::fedavg
