// Secure aggregation's protocol (strategies/fedavg/secagg.h), both halves.
#include "strategies/fedavg/secagg.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include <torch/torch.h>

#include "core/system/process.h"

namespace fedra::fedavg {

namespace {

constexpr const char* kMaskLabel = "fedra-secagg-mask";
constexpr const char* kSealLabel = "fedra-secagg-seal";
constexpr const char* kCommitLabel = "fedra-secagg-b";
constexpr size_t kPlainBytes = 16 + 2 * secagg::kShareBytes;  // sender, recipient, s share, b share
constexpr size_t kSealedBytes = kPlainBytes + 16;

at::Tensor bytes_tensor(const uint8_t* data, size_t size) {
  return torch::from_blob(const_cast<uint8_t*>(data), {static_cast<int64_t>(size)}, at::kByte).clone();
}

at::Tensor key_tensor(const secagg::Key& k) { return bytes_tensor(k.data(), k.size()); }

secagg::Key key_of(const at::Tensor& t, const std::string& what) {
  FEDRA_REQUIRE(t.scalar_type() == at::kByte && t.numel() == 32, "{} is not 32 bytes", what);
  secagg::Key k{};
  std::memcpy(k.data(), t.contiguous().data_ptr<uint8_t>(), 32);
  return k;
}

at::Tensor ids_tensor(const std::vector<WorkerId>& ids) {
  std::vector<int64_t> v(ids.begin(), ids.end());
  return at::tensor(v, at::kLong);
}

std::vector<WorkerId> ids_of(const Message& m, const char* name) {
  const at::Tensor& t = m.tensor(name);
  FEDRA_REQUIRE(t.scalar_type() == at::kLong && t.dim() == 1, "'{}' tensor '{}' is not a list of worker ids", m.kind,
                name);
  const at::Tensor c = t.contiguous();
  std::vector<WorkerId> out;
  for (int64_t i = 0; i < c.numel(); ++i) {
    const int64_t v = c.data_ptr<int64_t>()[i];
    FEDRA_REQUIRE(v > 0, "'{}' names worker id {}", m.kind, v);
    out.push_back(static_cast<WorkerId>(v));
  }
  return out;
}

// Rows of a [n, width] byte tensor.
std::vector<std::vector<uint8_t>> rows_of(const Message& m, const char* name, size_t n, size_t width) {
  const at::Tensor& t = m.tensor(name);
  FEDRA_REQUIRE(t.scalar_type() == at::kByte && t.dim() == 2 && t.size(0) == static_cast<int64_t>(n) &&
                    t.size(1) == static_cast<int64_t>(width),
                "'{}' tensor '{}' is not [{}, {}] bytes", m.kind, name, n, width);
  const at::Tensor c = t.contiguous();
  std::vector<std::vector<uint8_t>> out(n);
  for (size_t i = 0; i < n; ++i) {
    const uint8_t* p = c.data_ptr<uint8_t>() + i * width;
    out[i].assign(p, p + width);
  }
  return out;
}

at::Tensor rows_tensor(const std::vector<std::vector<uint8_t>>& rows, size_t width) {
  at::Tensor t = at::empty({static_cast<int64_t>(rows.size()), static_cast<int64_t>(width)}, at::kByte);
  for (size_t i = 0; i < rows.size(); ++i) std::memcpy(t.data_ptr<uint8_t>() + i * width, rows[i].data(), width);
  return t;
}

void put_u64(std::vector<uint8_t>& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
uint64_t get_u64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
  return v;
}

// What binds a sealed share to its round, sender and recipient: a share replayed from another
// round or moved to another worker does not open.
std::vector<uint8_t> seal_aad(uint32_t round, WorkerId from, WorkerId to) {
  std::vector<uint8_t> aad(kSealLabel, kSealLabel + std::strlen(kSealLabel));
  put_u64(aad, round);
  put_u64(aad, from);
  put_u64(aad, to);
  return aad;
}
std::array<uint8_t, 12> seal_nonce(WorkerId from) {  // one key per pair and round; the sender tells the direction
  std::array<uint8_t, 12> n{};
  for (int i = 0; i < 8; ++i) n[static_cast<size_t>(i)] = static_cast<uint8_t>(from >> (8 * i));
  return n;
}

size_t word_bytes(const secagg::Encoding& e) { return static_cast<size_t>(e.bits / 8); }

// The pairwise mask's sign: the smaller id adds, the larger subtracts, so the two cancel.
bool subtracts(WorkerId self, WorkerId other) { return self > other; }

Message expect(WorkerLink& link, const char* kind, double timeout_s, uint32_t round) {
  Message m = link.receive(std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000)));
  FEDRA_REQUIRE(m.kind == kind, "secure aggregation: expected '{}' from the coordinator, got '{}'", kind, m.kind);
  FEDRA_REQUIRE(m.round == round, "secure aggregation: '{}' of round {} during round {}", kind, m.round, round);
  return m;
}

void maybe_drop(const SecAggIns& ins, const char* step) {
  const auto colon = ins.drop.find(':');
  if (ins.drop.substr(0, colon) != step) return;
  if (colon != std::string::npos && ins.drop.substr(colon + 1) == "exit") {
    spdlog::warn("testing: dropping out of secure aggregation after {} (exiting)", step);
    std::_Exit(3);
  }
  FEDRA_FAIL("testing: dropped out of secure aggregation after {}", step);
}

const char* step_kind(int step) {
  static const char* kinds[] = {kSecAggKeys, kSecAggShares, kSecAggMasked, kSecAggReveal, "(none)"};
  return kinds[step];
}

}  // namespace

void SecAggOptions::validate(const std::string& scope) const {
  FEDRA_REQUIRE(secagg_bits_ == 32 || secagg_bits_ == 64, "{}.secagg_bits must be 32 or 64, got {}", scope, secagg_bits_);
  FEDRA_REQUIRE(secagg_clip_ > 0, "{}.secagg_clip must be > 0, got {}", scope, secagg_clip_);
  FEDRA_REQUIRE(secagg_threshold_ >= 0, "{}.secagg_threshold must be >= 0 (0: a majority of the neighbours), got {}",
                scope, secagg_threshold_);
  FEDRA_REQUIRE(secagg_neighbours_ >= 0, "{}.secagg_neighbours must be >= 0 (0: all pairs), got {}", scope,
                secagg_neighbours_);
  FEDRA_REQUIRE(secagg_timeout_ > 0, "{}.secagg_timeout must be > 0 seconds, got {}", scope, secagg_timeout_);
}

void SecAggIns::encode(Message& fit) const {
  if (!on) return;
  fit.options["secagg.bits"] = std::to_string(encoding.bits);
  fit.options["secagg.frac_bits"] = std::to_string(encoding.frac_bits);
  fit.options["secagg.clip"] = fmt::format("{:.17g}", encoding.clip);
  fit.options["secagg.weight"] = fmt::format("{:.17g}", weight);
  fit.options["secagg.timeout"] = fmt::format("{:.17g}", timeout_s);
  fit.options["secagg.first_wait"] = fmt::format("{:.17g}", first_wait_s);
  if (!drop.empty()) fit.options["testing.secagg_drop"] = drop;
  if (!cheat.empty()) fit.options["testing.secagg_cheat"] = cheat;
}

SecAggIns SecAggIns::decode(const Message& fit) {
  SecAggIns s;
  if (!fit.options.count("secagg.bits")) return s;
  fit.require_options({"secagg.frac_bits", "secagg.clip", "secagg.weight", "secagg.timeout", "secagg.first_wait"});
  const OptionMap o(fit.kind, fit.options);
  s.on = true;
  s.encoding.bits = static_cast<int>(o.get_int("secagg.bits", 0));
  s.encoding.frac_bits = static_cast<int>(o.get_int("secagg.frac_bits", -1));
  s.encoding.clip = o.get_double("secagg.clip", 0);
  s.weight = o.get_double("secagg.weight", 0);
  s.timeout_s = o.get_double("secagg.timeout", 0);
  s.first_wait_s = o.get_double("secagg.first_wait", 0);
  FEDRA_REQUIRE((s.encoding.bits == 32 || s.encoding.bits == 64) && s.encoding.frac_bits >= 0 &&
                    s.encoding.frac_bits < s.encoding.bits && s.encoding.clip > 0 && s.weight > 0 && s.timeout_s > 0 && s.first_wait_s > 0,
                "'{}' asks for secure aggregation with bits {}, frac_bits {}, clip {}, weight {}, timeout {}", fit.kind,
                s.encoding.bits, s.encoding.frac_bits, s.encoding.clip, s.weight, s.timeout_s);
  s.drop = fit.option_or("testing.secagg_drop", "");
  s.cheat = fit.option_or("testing.secagg_cheat", "");
  return s;
}

int64_t secagg_length(const NamedTensors& global) {
  int64_t n = 0;
  for (const auto& [name, t] : global) {
    if (t.is_floating_point()) n += t.numel();
  }
  return n;
}

// ---------------------------------------------------------------------------------------------
// The worker

Message secagg_worker(const SecAggIns& ins, uint32_t round, const NamedTensors& global, const NamedTensors& trained,
                      const std::map<std::string, double>& figures, WorkerContext& ctx, WorkerLink& link) {
  const double cpu0 = thread_cpu_seconds();
  const WorkerId me = ctx.worker_id;
  FEDRA_REQUIRE(me > 0, "secure aggregation needs the worker's id from the coordinator's welcome");
  FEDRA_REQUIRE(global.size() == trained.size(), "secure aggregation: the trained model has {} tensors, the global {}",
                trained.size(), global.size());
  // Step 1: two fresh key pairs.
  const secagg::KeyPair c = secagg::KeyPair::generate(), s = secagg::KeyPair::generate();
  {
    Message keys(kSecAggKeys, round);
    keys.tensors.emplace_back("c_pk", key_tensor(c.public_key));
    keys.tensors.emplace_back("s_pk", key_tensor(s.public_key));
    link.send(keys);
    if (ins.cheat == "replay") link.send(keys);  // tests: the same message again
  }
  maybe_drop(ins, "keys");

  // Step 2: the roster; shares of s and b for each neighbour, sealed for it.
  const Message roster = expect(link, kSecAggRoster, ins.first_wait_s, round);
  const std::vector<WorkerId> ids = ids_of(roster, "ids");
  const auto c_pks = rows_of(roster, "c_pk", ids.size(), 32), s_pks = rows_of(roster, "s_pk", ids.size(), 32);
  std::map<WorkerId, std::pair<secagg::Key, secagg::Key>> keys_of;
  for (size_t i = 0; i < ids.size(); ++i) {
    secagg::Key ck{}, sk{};
    std::memcpy(ck.data(), c_pks[i].data(), 32);
    std::memcpy(sk.data(), s_pks[i].data(), 32);
    FEDRA_REQUIRE(keys_of.emplace(ids[i], std::make_pair(ck, sk)).second, "secure aggregation: the roster names worker "
                  "#{} twice", ids[i]);
  }
  const auto self = std::find(ids.begin(), ids.end(), me);
  FEDRA_REQUIRE(self != ids.end() && keys_of[me].first == c.public_key && keys_of[me].second == s.public_key,
                "secure aggregation: the roster does not hold this worker's keys");
  FEDRA_REQUIRE(std::is_sorted(ids.begin(), ids.end()), "secure aggregation: the roster's ids are not sorted");
  const auto k = static_cast<size_t>(roster.metric("neighbours"));
  const auto t = static_cast<int>(roster.metric("threshold"));
  const auto seed = static_cast<uint64_t>(roster.metric("graph_seed"));
  std::vector<WorkerId> mine;
  for (size_t p : secagg::neighbours(static_cast<size_t>(self - ids.begin()), ids.size(), k, seed)) mine.push_back(ids[p]);
  FEDRA_REQUIRE(t >= 1 && static_cast<size_t>(t) <= mine.size() + 1,
                "secure aggregation: threshold {} with {} neighbours", t, mine.size());
  const secagg::Key b = secagg::random_key();
  // One share per neighbour and one kept (the last): as in Bonawitz et al., a worker holds a share
  // of its own secrets, and reveals its own b's when it is still there at the end.
  std::vector<uint64_t> xs(mine.begin(), mine.end());
  xs.push_back(me);
  const auto s_shares = secagg::split(s.secret, t, xs);
  const auto b_shares = secagg::split(b, t, xs);
  const secagg::Share own_b = b_shares.back();
  // One key per neighbour pair, sealing what goes to it and opening what comes from it.
  std::map<WorkerId, secagg::Key> seal_key;
  for (WorkerId v : mine) seal_key[v] = secagg::agree(c.secret, keys_of.at(v).first, kSealLabel);
  {
    std::vector<std::vector<uint8_t>> sealed;
    for (size_t i = 0; i < mine.size(); ++i) {
      std::vector<uint8_t> plain;
      put_u64(plain, me);
      put_u64(plain, mine[i]);
      plain.resize(kPlainBytes);
      secagg::write_share(s_shares[i], plain.data() + 16);
      secagg::write_share(b_shares[i], plain.data() + 16 + secagg::kShareBytes);
      sealed.push_back(
          secagg::seal(seal_key.at(mine[i]), seal_nonce(me), seal_aad(round, me, mine[i]), plain.data(), plain.size()));
    }
    Message shares(kSecAggShares, round);
    shares.tensors.emplace_back("to", ids_tensor(mine));
    shares.tensors.emplace_back("sealed", rows_tensor(sealed, kSealedBytes));
    shares.tensors.emplace_back("b_commit", key_tensor(secagg::hash(kCommitLabel, b.data(), b.size())));
    link.send(shares);
  }
  maybe_drop(ins, "shares");

  // Step 3: the shares addressed to this worker; its masked input.
  const Message inbox = expect(link, kSecAggInbox, ins.timeout_s * 2, round);
  const std::vector<WorkerId> senders = ids_of(inbox, "from");
  const auto sealed_in = rows_of(inbox, "sealed", senders.size(), kSealedBytes);
  std::map<WorkerId, std::pair<secagg::Share, secagg::Share>> held;  // sender -> (its s share, its b share)
  for (size_t i = 0; i < senders.size(); ++i) {
    const WorkerId from = senders[i];
    FEDRA_REQUIRE(std::binary_search(mine.begin(), mine.end(), from),
                  "secure aggregation: the inbox holds a share from worker #{}, not a neighbour", from);
    std::vector<uint8_t> plain;
    try {
      plain = secagg::open(seal_key.at(from), seal_nonce(from), seal_aad(round, from, me), sealed_in[i].data(), sealed_in[i].size());
    } catch (const Error& e) {
      FEDRA_FAIL("secure aggregation: the share from worker #{} does not open: {}", from, e.what());
    }
    FEDRA_REQUIRE(plain.size() == kPlainBytes && get_u64(plain.data()) == from && get_u64(plain.data() + 8) == me,
                  "secure aggregation: the share from worker #{} names other workers", from);
    const secagg::Share ss = secagg::read_share(plain.data() + 16), bs = secagg::read_share(plain.data() + 16 + 48);
    FEDRA_REQUIRE(ss.x == me && bs.x == me, "secure aggregation: the share from worker #{} is not for this worker", from);
    FEDRA_REQUIRE(held.emplace(from, std::make_pair(ss, bs)).second, "secure aggregation: two shares from worker #{}",
                  from);
  }
  const secagg::Encoding& enc = ins.encoding;
  const int64_t n = secagg_length(global);
  std::vector<float> delta(static_cast<size_t>(n));
  {
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
  }
  const int64_t sent_length = ins.cheat == "length" ? n + 1 : n;  // tests: a vector of another length
  at::Tensor y = at::zeros({sent_length}, enc.bits == 32 ? at::kInt : at::kLong);
  const double clipped = static_cast<double>(secagg::encode(delta.data(), static_cast<size_t>(n), ins.weight, enc,
                                                            y.data_ptr()));
  secagg::add_mask(y.data_ptr(), static_cast<size_t>(n), enc.bits, b, false);
  for (const auto& [v, unused] : held) {
    const secagg::Key s_uv = secagg::agree(s.secret, keys_of.at(v).second, kMaskLabel);
    secagg::add_mask(y.data_ptr(), static_cast<size_t>(n), enc.bits, s_uv, subtracts(me, v));
  }
  {
    Message masked(kSecAggMasked, round);
    masked.tensors.emplace_back("y", std::move(y));
    masked.metrics = figures;
    masked.metrics["secagg_clipped"] = clipped;
    // CPU this worker's thread spent on the protocol so far: keys, shares, encoding and masks.
    masked.metrics["secagg_cpu_s"] = thread_cpu_seconds() - cpu0;
    link.send(masked);
  }
  maybe_drop(ins, "masked");

  // Step 4: which neighbours uploaded; the shares that remove their masks and the dropped ones'.
  const Message unmask = expect(link, kSecAggUnmask, ins.timeout_s * 2, round);
  const std::vector<WorkerId> survivors = ids_of(unmask, "survivors"), dropped = ids_of(unmask, "dropped");
  std::vector<WorkerId> b_of, s_of;
  std::vector<std::vector<uint8_t>> b_rows, s_rows;
  std::set<WorkerId> revealed;
  {
    std::vector<uint8_t> row(secagg::kShareBytes);
    secagg::write_share(own_b, row.data());
    b_of.push_back(me);
    b_rows.push_back(std::move(row));
  }
  for (WorkerId v : survivors) {
    FEDRA_REQUIRE(held.count(v), "secure aggregation: asked for a share of worker #{}'s mask, which this worker does "
                  "not hold", v);
    FEDRA_REQUIRE(revealed.insert(v).second, "secure aggregation: asked twice about worker #{}", v);
    std::vector<uint8_t> row(secagg::kShareBytes);
    secagg::write_share(held.at(v).second, row.data());
    b_of.push_back(v);
    b_rows.push_back(std::move(row));
  }
  for (WorkerId v : dropped) {
    FEDRA_REQUIRE(held.count(v), "secure aggregation: asked for a share of worker #{}'s key, which this worker does "
                  "not hold", v);
    // Never both shares of one worker: with them the coordinator could unmask its input.
    FEDRA_REQUIRE(revealed.insert(v).second, "secure aggregation: the coordinator asked for both secrets of worker "
                  "#{} (as uploaded and as dropped); refused", v);
    std::vector<uint8_t> row(secagg::kShareBytes);
    secagg::write_share(held.at(v).first, row.data());
    s_of.push_back(v);
    s_rows.push_back(std::move(row));
  }
  if (ins.cheat == "wrong_share" && b_rows.size() > 1) b_rows[1][20] ^= 0x5a;  // tests: a corrupted share
  Message reveal(kSecAggReveal, round);
  reveal.tensors.emplace_back("b_of", ids_tensor(b_of));
  reveal.tensors.emplace_back("b_shares", rows_tensor(b_rows, secagg::kShareBytes));
  reveal.tensors.emplace_back("s_of", ids_tensor(s_of));
  reveal.tensors.emplace_back("s_shares", rows_tensor(s_rows, secagg::kShareBytes));
  return reveal;
}

// ---------------------------------------------------------------------------------------------
// The coordinator

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
  if (msg.kind == kSecAggKeys) {
    Member& m = member(w, Step::kKeys, msg.kind);
    m.c_pk = key_of(msg.tensor("c_pk"), w.name + "'s c_pk");
    m.s_pk = key_of(msg.tensor("s_pk"), w.name + "'s s_pk");
    m.next = Step::kShares;
  } else if (msg.kind == kSecAggShares) {
    Member& m = member(w, Step::kShares, msg.kind);
    const std::vector<WorkerId> to = ids_of(msg, "to");
    if (to != m.neighbours) {
      refuse(fmt::format("secure aggregation refused {}: it sent shares for workers {}, its neighbours are {}", w.name,
                            fmt::join(to, ","), fmt::join(m.neighbours, ",")));
    }
    const auto sealed = rows_of(msg, "sealed", to.size(), kSealedBytes);
    m.b_commit = key_of(msg.tensor("b_commit"), w.name + "'s b_commit");
    for (size_t i = 0; i < to.size(); ++i) m.sealed.emplace_back(to[i], sealed[i]);
    m.next = Step::kMasked;
  } else if (msg.kind == kSecAggMasked) {
    Member& m = member(w, Step::kMasked, msg.kind);
    const at::Tensor& y = msg.tensor("y");
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
    result_.clipped += static_cast<size_t>(msg.metric_or("secagg_clipped", 0));
    result_.worker_cpu_s = std::max(result_.worker_cpu_s, msg.metric_or("secagg_cpu_s", 0));
    result_.figures.emplace_back(w.name, msg.metrics);
    m.next = Step::kReveal;
  } else {
    FEDRA_FAIL("secure aggregation: unexpected '{}' from {}", msg.kind, w.name);
  }
  advance();
}

void SecAggRound::on_reply(const WorkerInfo& w, Message&& msg) {
  FEDRA_REQUIRE(msg.round == round_, "secure aggregation refused {}: its '{}' is of round {}, this is round {}", w.name,
                msg.kind, msg.round, round_);
  FEDRA_REQUIRE(msg.kind == kSecAggReveal, "secure aggregation: {} ended its round with '{}', not '{}'", w.name,
                msg.kind, kSecAggReveal);
  Member& m = member(w, Step::kReveal, msg.kind);
  const std::vector<WorkerId> b_of = ids_of(msg, "b_of"), s_of = ids_of(msg, "s_of");
  const auto b_rows = rows_of(msg, "b_shares", b_of.size(), secagg::kShareBytes);
  const auto s_rows = rows_of(msg, "s_shares", s_of.size(), secagg::kShareBytes);
  for (size_t i = 0; i < b_of.size() + s_of.size(); ++i) {
    const bool is_b = i < b_of.size();
    const WorkerId owner = is_b ? b_of[i] : s_of[i - b_of.size()];
    const secagg::Share share = secagg::read_share(is_b ? b_rows[i].data() : s_rows[i - b_of.size()].data());
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
  Message roster(kSecAggRoster, round_);
  std::vector<std::vector<uint8_t>> c_rows, s_rows;
  for (size_t i = 0; i < n; ++i) {
    Member& m = members_.at(u1_[i]);
    c_rows.emplace_back(m.c_pk.begin(), m.c_pk.end());
    s_rows.emplace_back(m.s_pk.begin(), m.s_pk.end());
    m.neighbours.clear();
    for (size_t p : secagg::neighbours(i, n, k, graph_seed_)) m.neighbours.push_back(u1_[p]);
  }
  roster.tensors.emplace_back("ids", ids_tensor(u1_));
  roster.tensors.emplace_back("c_pk", rows_tensor(c_rows, 32));
  roster.tensors.emplace_back("s_pk", rows_tensor(s_rows, 32));
  roster.metrics["neighbours"] = static_cast<double>(k);
  roster.metrics["threshold"] = static_cast<double>(threshold_);
  roster.metrics["graph_seed"] = static_cast<double>(graph_seed_);
  step_ = Step::kShares;
  deadline_ = Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(options_.secagg_timeout() * 1000));
  for (WorkerId id : u1_) cohort_->post(id, roster);
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
    Message inbox(kSecAggInbox, round_);
    std::vector<WorkerId> from;
    std::vector<std::vector<uint8_t>> sealed;
    for (WorkerId u : members_.at(v).neighbours) {
      if (!shared.count(u)) continue;
      for (const auto& [to, bytes] : members_.at(u).sealed) {
        if (to == v) {
          from.push_back(u);
          sealed.push_back(bytes);
        }
      }
    }
    inbox.tensors.emplace_back("from", ids_tensor(from));
    inbox.tensors.emplace_back("sealed", rows_tensor(sealed, kSealedBytes));
    cohort_->post(v, inbox);
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
    Message unmask(kSecAggUnmask, round_);
    unmask.tensors.emplace_back("survivors", ids_tensor(survivors));
    unmask.tensors.emplace_back("dropped", ids_tensor(dropped));
    cohort_->post(v, unmask);
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
