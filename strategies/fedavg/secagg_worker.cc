// Secure aggregation's worker half (strategies/fedavg/secagg.h has the protocol), one method a step.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <set>

#include <spdlog/spdlog.h>

#include <torch/torch.h>

#include "core/system/process.h"
#include "strategies/fedavg/secagg.h"
#include "strategies/fedavg/secagg_messages.h"

namespace fedra::fedavg {

namespace {

using namespace secagg_wire;

Message expect(WorkerLink& link, const char* kind, double timeout_s, uint32_t round) {
  Message m = link.receive(std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000)));
  FEDRA_REQUIRE(m.kind == kind, "secure aggregation: expected '{}' from the coordinator, got '{}'", kind, m.kind);
  FEDRA_REQUIRE(m.round == round, "secure aggregation: '{}' of round {} during round {}", kind, m.round, round);
  return m;
}

class WorkerProtocol {
 public:
  WorkerProtocol(const SecAggIns& ins, uint32_t round, WorkerContext& ctx, WorkerLink& link)
      : ins_(ins), round_(round), me_(ctx.worker_id), link_(link) {
    FEDRA_REQUIRE(me_ > 0, "secure aggregation needs the worker's id from the coordinator's welcome");
  }

  // Step 1: two fresh key pairs.
  void send_keys() {
    const Message keys = SecAggKeys{round_, c_.public_key, s_.public_key}.encode();
    link_.send(keys);
    if (ins_.cheat == "replay") link_.send(keys);  // tests: the same message again
    maybe_drop("keys");
  }

  // Step 2: the roster; shares of s and b for each neighbour, sealed for it.
  void send_shares() {
    const SecAggRoster roster = SecAggRoster::decode(expect(link_, SecAggRoster::kKind, ins_.first_wait_s, round_));
    read_roster(roster);
    // One share per neighbour and one kept (the last): as in Bonawitz et al., a worker holds a
    // share of its own secrets, and reveals its own b's when it is still there at the end.
    std::vector<uint64_t> xs(mine_.begin(), mine_.end());
    xs.push_back(me_);
    const auto s_shares = secagg::split(s_.secret, threshold_, xs);
    const auto b_shares = secagg::split(b_, threshold_, xs);
    own_b_ = b_shares.back();
    SecAggShares out;
    out.round = round_;
    out.to = mine_;
    for (size_t i = 0; i < mine_.size(); ++i) {
      const WorkerId v = mine_[i];
      seal_key_[v] = secagg::agree(c_.secret, keys_.at(v).first, kSealLabel);
      Bytes plain;
      put_u64(plain, me_);
      put_u64(plain, v);
      plain.resize(kPlainBytes);
      secagg::write_share(s_shares[i], plain.data() + 16);
      secagg::write_share(b_shares[i], plain.data() + 16 + secagg::kShareBytes);
      out.sealed.push_back(secagg::seal(seal_key_.at(v), seal_nonce(me_), seal_aad(round_, me_, v), plain.data(),
                                        plain.size()));
    }
    out.b_commit = secagg::hash(kCommitLabel, b_.data(), b_.size());
    link_.send(out.encode());
    maybe_drop("shares");
  }

  // Step 3: the shares addressed to this worker; its masked input.
  void send_masked(const NamedTensors& global, const NamedTensors& trained, const std::map<std::string, double>& figures) {
    open_inbox(SecAggInbox::decode(expect(link_, SecAggInbox::kKind, ins_.timeout_s * 2, round_)));
    const secagg::Encoding& enc = ins_.encoding;
    const int64_t n = secagg_length(global);
    const std::vector<float> delta = update_of(global, trained, n);
    const int64_t sent_length = ins_.cheat == "length" ? n + 1 : n;  // tests: a vector of another length
    SecAggMasked masked;
    masked.round = round_;
    masked.y = at::zeros({sent_length}, enc.bits == 32 ? at::kInt : at::kLong);
    const double clipped = static_cast<double>(
        secagg::encode(delta.data(), static_cast<size_t>(n), ins_.weight, enc, masked.y.data_ptr()));
    secagg::add_mask(masked.y.data_ptr(), static_cast<size_t>(n), enc.bits, b_, false);
    for (const auto& [v, unused] : held_) {
      const secagg::Key s_uv = secagg::agree(s_.secret, keys_.at(v).second, kMaskLabel);
      secagg::add_mask(masked.y.data_ptr(), static_cast<size_t>(n), enc.bits, s_uv, subtracts(me_, v));
    }
    masked.figures = figures;
    masked.figures["secagg_clipped"] = clipped;
    // CPU this worker's thread spent on the protocol so far: keys, shares, encoding and masks.
    masked.figures["secagg_cpu_s"] = thread_cpu_seconds() - cpu0_;
    link_.send(masked.encode());
    maybe_drop("masked");
  }

  // Step 4: which neighbours uploaded; the shares that remove their masks and the dropped ones'.
  Message reveal() {
    const SecAggUnmask unmask = SecAggUnmask::decode(expect(link_, SecAggUnmask::kKind, ins_.timeout_s * 2, round_));
    SecAggReveal out;
    out.round = round_;
    out.b_of.push_back(me_);
    out.b_shares.push_back(own_b_);
    std::set<WorkerId> revealed;
    for (WorkerId v : unmask.survivors) {
      FEDRA_REQUIRE(held_.count(v), "secure aggregation: asked for a share of worker #{}'s mask, which this worker "
                    "does not hold", v);
      FEDRA_REQUIRE(revealed.insert(v).second, "secure aggregation: asked twice about worker #{}", v);
      out.b_of.push_back(v);
      out.b_shares.push_back(held_.at(v).second);
    }
    for (WorkerId v : unmask.dropped) {
      FEDRA_REQUIRE(held_.count(v), "secure aggregation: asked for a share of worker #{}'s key, which this worker "
                    "does not hold", v);
      // Never both shares of one worker: with them the coordinator could unmask its input.
      FEDRA_REQUIRE(revealed.insert(v).second, "secure aggregation: the coordinator asked for both secrets of "
                    "worker #{} (as uploaded and as dropped); refused", v);
      out.s_of.push_back(v);
      out.s_shares.push_back(held_.at(v).first);
    }
    if (ins_.cheat == "wrong_share" && out.b_shares.size() > 1) {
      out.b_shares[1].y[1] ^= uint64_t{0x5a} << 32;  // tests: a corrupted share
    }
    return out.encode();
  }

 private:
  void read_roster(const SecAggRoster& roster) {
    for (size_t i = 0; i < roster.ids.size(); ++i) {
      FEDRA_REQUIRE(keys_.emplace(roster.ids[i], std::make_pair(roster.c_pk[i], roster.s_pk[i])).second,
                    "secure aggregation: the roster names worker #{} twice", roster.ids[i]);
    }
    const auto self = std::find(roster.ids.begin(), roster.ids.end(), me_);
    FEDRA_REQUIRE(self != roster.ids.end() && keys_[me_].first == c_.public_key && keys_[me_].second == s_.public_key,
                  "secure aggregation: the roster does not hold this worker's keys");
    FEDRA_REQUIRE(std::is_sorted(roster.ids.begin(), roster.ids.end()), "secure aggregation: the roster's ids are not sorted");
    const auto k = static_cast<size_t>(roster.neighbours);
    for (size_t p : secagg::neighbours(static_cast<size_t>(self - roster.ids.begin()), roster.ids.size(), k,
                                       roster.graph_seed)) {
      mine_.push_back(roster.ids[p]);
    }
    threshold_ = static_cast<int>(roster.threshold);
    FEDRA_REQUIRE(threshold_ >= 1 && static_cast<size_t>(threshold_) <= mine_.size() + 1,
                  "secure aggregation: threshold {} with {} neighbours", threshold_, mine_.size());
  }

  void open_inbox(const SecAggInbox& inbox) {
    for (size_t i = 0; i < inbox.from.size(); ++i) {
      const WorkerId from = inbox.from[i];
      FEDRA_REQUIRE(std::binary_search(mine_.begin(), mine_.end(), from),
                    "secure aggregation: the inbox holds a share from worker #{}, not a neighbour", from);
      Bytes plain;
      try {
        plain = secagg::open(seal_key_.at(from), seal_nonce(from), seal_aad(round_, from, me_), inbox.sealed[i].data(),
                             inbox.sealed[i].size());
      } catch (const Error& e) {
        FEDRA_FAIL("secure aggregation: the share from worker #{} does not open: {}", from, e.what());
      }
      FEDRA_REQUIRE(plain.size() == kPlainBytes && get_u64(plain.data()) == from && get_u64(plain.data() + 8) == me_,
                    "secure aggregation: the share from worker #{} names other workers", from);
      const secagg::Share ss = secagg::read_share(plain.data() + 16);
      const secagg::Share bs = secagg::read_share(plain.data() + 16 + secagg::kShareBytes);
      FEDRA_REQUIRE(ss.x == me_ && bs.x == me_, "secure aggregation: the share from worker #{} is not for this worker",
                    from);
      FEDRA_REQUIRE(held_.emplace(from, std::make_pair(ss, bs)).second, "secure aggregation: two shares from worker #{}",
                    from);
    }
  }

  // The update trained - global over the float tensors, as one vector.
  static std::vector<float> update_of(const NamedTensors& global, const NamedTensors& trained, int64_t n) {
    FEDRA_REQUIRE(global.size() == trained.size(), "secure aggregation: the trained model has {} tensors, the global {}",
                  trained.size(), global.size());
    std::vector<float> delta(static_cast<size_t>(n));
    torch::NoGradGuard no_grad;
    int64_t at = 0;
    for (size_t i = 0; i < global.size(); ++i) {
      const at::Tensor& g = global[i].second;
      if (!g.is_floating_point()) continue;
      FEDRA_REQUIRE(trained[i].second.numel() == g.numel(), "secure aggregation: tensor '{}' changed size",
                    global[i].first);
      const at::Tensor d = (trained[i].second.to(at::kDouble) - g.to(at::kDouble)).to(at::kFloat).contiguous();
      std::memcpy(delta.data() + at, d.data_ptr<float>(), static_cast<size_t>(d.numel()) * sizeof(float));
      at += d.numel();
    }
    return delta;
  }

  void maybe_drop(const char* step) const {
    const auto colon = ins_.drop.find(':');
    if (ins_.drop.substr(0, colon) != step) return;
    if (colon != std::string::npos && ins_.drop.substr(colon + 1) == "exit") {
      spdlog::warn("testing: dropping out of secure aggregation after {} (exiting)", step);
      std::_Exit(3);
    }
    FEDRA_FAIL("testing: dropped out of secure aggregation after {}", step);
  }

  const SecAggIns& ins_;
  const uint32_t round_;
  const WorkerId me_;
  WorkerLink& link_;
  const double cpu0_ = thread_cpu_seconds();
  const secagg::KeyPair c_ = secagg::KeyPair::generate(), s_ = secagg::KeyPair::generate();
  const secagg::Key b_ = secagg::random_key();
  std::map<WorkerId, std::pair<secagg::Key, secagg::Key>> keys_;  // the roster's (c_pk, s_pk)
  std::vector<WorkerId> mine_;                                      // this worker's neighbours
  int threshold_ = 0;
  secagg::Share own_b_;
  std::map<WorkerId, secagg::Key> seal_key_;  // one per neighbour: seals what goes, opens what comes
  std::map<WorkerId, std::pair<secagg::Share, secagg::Share>> held_;  // sender -> (its s share, its b share)
};

}  // namespace

Message secagg_worker(const SecAggIns& ins, uint32_t round, const NamedTensors& global, const NamedTensors& trained,
                      const std::map<std::string, double>& figures, WorkerContext& ctx, WorkerLink& link) {
  WorkerProtocol p(ins, round, ctx, link);
  p.send_keys();
  p.send_shares();
  p.send_masked(global, trained, figures);
  return p.reveal();
}

}  // namespace fedra::fedavg
