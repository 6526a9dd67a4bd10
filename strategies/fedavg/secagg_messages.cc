// Secure aggregation's options, its part of fedavg.fit, and its messages: each field written and
// read in one place.
#include "strategies/fedavg/secagg_messages.h"

#include <cstring>

#include <torch/torch.h>

#include "strategies/fedavg/secagg.h"

namespace fedra::fedavg {

namespace secagg_wire {

void put_u64(Bytes& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}

uint64_t get_u64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
  return v;
}

Bytes seal_aad(uint32_t round, WorkerId from, WorkerId to) {
  Bytes aad(kSealLabel, kSealLabel + std::strlen(kSealLabel));
  put_u64(aad, round);
  put_u64(aad, from);
  put_u64(aad, to);
  return aad;
}

std::array<uint8_t, 12> seal_nonce(WorkerId from) {
  std::array<uint8_t, 12> n{};
  for (int i = 0; i < 8; ++i) n[static_cast<size_t>(i)] = static_cast<uint8_t>(from >> (8 * i));
  return n;
}

}  // namespace secagg_wire

namespace {

using secagg_wire::Bytes;

at::Tensor key_tensor(const secagg::Key& k) {
  return torch::from_blob(const_cast<uint8_t*>(k.data()), {static_cast<int64_t>(k.size())}, at::kByte).clone();
}

secagg::Key key_of(const Message& m, const char* name, const std::string& who) {
  const at::Tensor& t = m.tensor(name);
  FEDRA_REQUIRE(t.scalar_type() == at::kByte && t.numel() == 32, "{}'s '{}' tensor '{}' is not 32 bytes", who, m.kind,
                name);
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
std::vector<Bytes> rows_of(const Message& m, const char* name, size_t n, size_t width) {
  const at::Tensor& t = m.tensor(name);
  FEDRA_REQUIRE(t.scalar_type() == at::kByte && t.dim() == 2 && t.size(0) == static_cast<int64_t>(n) &&
                    t.size(1) == static_cast<int64_t>(width),
                "'{}' tensor '{}' is not [{}, {}] bytes", m.kind, name, n, width);
  const at::Tensor c = t.contiguous();
  std::vector<Bytes> out(n);
  for (size_t i = 0; i < n; ++i) {
    const uint8_t* p = c.data_ptr<uint8_t>() + i * width;
    out[i].assign(p, p + width);
  }
  return out;
}

at::Tensor rows_tensor(const std::vector<Bytes>& rows, size_t width) {
  at::Tensor t = at::empty({static_cast<int64_t>(rows.size()), static_cast<int64_t>(width)}, at::kByte);
  for (size_t i = 0; i < rows.size(); ++i) std::memcpy(t.data_ptr<uint8_t>() + i * width, rows[i].data(), width);
  return t;
}

std::vector<Bytes> key_rows(const std::vector<secagg::Key>& keys) {
  std::vector<Bytes> rows;
  for (const auto& k : keys) rows.emplace_back(k.begin(), k.end());
  return rows;
}

std::vector<secagg::Key> keys_of_rows(const std::vector<Bytes>& rows) {
  std::vector<secagg::Key> keys(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) std::memcpy(keys[i].data(), rows[i].data(), 32);
  return keys;
}

std::vector<Bytes> share_rows(const std::vector<secagg::Share>& shares) {
  std::vector<Bytes> rows;
  for (const auto& s : shares) {
    rows.emplace_back(secagg::kShareBytes);
    secagg::write_share(s, rows.back().data());
  }
  return rows;
}

std::vector<secagg::Share> shares_of_rows(const std::vector<Bytes>& rows) {
  std::vector<secagg::Share> out;
  for (const auto& r : rows) out.push_back(secagg::read_share(r.data()));
  return out;
}

// A message of `kind` holding just these tensors.
Message with_tensors(const char* kind, uint32_t round, NamedTensors tensors) {
  Message m(kind, round);
  m.tensors = std::move(tensors);
  return m;
}

}  // namespace

void SecAggOptions::validate(const std::string& scope) const {
  FEDRA_REQUIRE(secagg_bits_ == 32 || secagg_bits_ == 64, "{}.secagg_bits must be 32 or 64, got {}", scope, secagg_bits_);
  FEDRA_REQUIRE(secagg_clip_ > 0, "{}.secagg_clip must be > 0, got {}", scope, secagg_clip_);
  FEDRA_REQUIRE(secagg_threshold_ >= 0, "{}.secagg_threshold must be >= 0 (0: a majority of the neighbours), got {}",
                scope, secagg_threshold_);
  FEDRA_REQUIRE(secagg_neighbours_ >= 0, "{}.secagg_neighbours must be >= 0 (0: all pairs), got {}", scope,
                secagg_neighbours_);
  check_seconds(secagg_timeout_, scope, "secagg_timeout");
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
                    s.encoding.frac_bits < s.encoding.bits && s.encoding.clip > 0 && s.weight > 0 && s.timeout_s > 0 &&
                    s.first_wait_s > 0,
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

Message SecAggKeys::encode() const {
  return with_tensors(kKind, round, {{"c_pk", key_tensor(c_pk)}, {"s_pk", key_tensor(s_pk)}});
}

SecAggKeys SecAggKeys::decode(const Message& m, const std::string& who) {
  SecAggKeys k;
  k.round = m.round;
  k.c_pk = key_of(m, "c_pk", who);
  k.s_pk = key_of(m, "s_pk", who);
  return k;
}

Message SecAggRoster::encode() const {
  Message m(SecAggRoster::kKind, round);
  m.tensors.emplace_back("ids", ids_tensor(ids));
  m.tensors.emplace_back("c_pk", rows_tensor(key_rows(c_pk), 32));
  m.tensors.emplace_back("s_pk", rows_tensor(key_rows(s_pk), 32));
  m.metrics["neighbours"] = static_cast<double>(neighbours);
  m.metrics["threshold"] = static_cast<double>(threshold);
  m.metrics["graph_seed"] = static_cast<double>(graph_seed);
  return m;
}

SecAggRoster SecAggRoster::decode(const Message& m) {
  SecAggRoster r;
  r.round = m.round;
  r.ids = ids_of(m, "ids");
  r.c_pk = keys_of_rows(rows_of(m, "c_pk", r.ids.size(), 32));
  r.s_pk = keys_of_rows(rows_of(m, "s_pk", r.ids.size(), 32));
  r.neighbours = static_cast<int64_t>(m.metric("neighbours"));
  r.threshold = static_cast<int64_t>(m.metric("threshold"));
  r.graph_seed = static_cast<uint64_t>(m.metric("graph_seed"));
  return r;
}

Message SecAggShares::encode() const {
  Message m(SecAggShares::kKind, round);
  m.tensors.emplace_back("to", ids_tensor(to));
  m.tensors.emplace_back("sealed", rows_tensor(sealed, secagg_wire::kSealedBytes));
  m.tensors.emplace_back("b_commit", key_tensor(b_commit));
  return m;
}

SecAggShares SecAggShares::decode(const Message& m, const std::string& who) {
  SecAggShares s;
  s.round = m.round;
  s.to = ids_of(m, "to");
  s.sealed = rows_of(m, "sealed", s.to.size(), secagg_wire::kSealedBytes);
  s.b_commit = key_of(m, "b_commit", who);
  return s;
}

Message SecAggInbox::encode() const {
  return with_tensors(kKind, round, {{"from", ids_tensor(from)}, {"sealed", rows_tensor(sealed, secagg_wire::kSealedBytes)}});
}

SecAggInbox SecAggInbox::decode(const Message& m) {
  SecAggInbox in;
  in.round = m.round;
  in.from = ids_of(m, "from");
  in.sealed = rows_of(m, "sealed", in.from.size(), secagg_wire::kSealedBytes);
  return in;
}

Message SecAggMasked::encode() const {
  Message m(SecAggMasked::kKind, round);
  m.tensors.emplace_back("y", y);
  m.metrics = figures;
  return m;
}

SecAggMasked SecAggMasked::decode(Message&& m) {
  SecAggMasked out;
  out.round = m.round;
  out.y = m.tensor("y");
  out.figures = std::move(m.metrics);
  return out;
}

Message SecAggUnmask::encode() const {
  return with_tensors(kKind, round, {{"survivors", ids_tensor(survivors)}, {"dropped", ids_tensor(dropped)}});
}

SecAggUnmask SecAggUnmask::decode(const Message& m) {
  SecAggUnmask u;
  u.round = m.round;
  u.survivors = ids_of(m, "survivors");
  u.dropped = ids_of(m, "dropped");
  return u;
}

Message SecAggReveal::encode() const {
  Message m(SecAggReveal::kKind, round);
  m.tensors.emplace_back("b_of", ids_tensor(b_of));
  m.tensors.emplace_back("b_shares", rows_tensor(share_rows(b_shares), secagg::kShareBytes));
  m.tensors.emplace_back("s_of", ids_tensor(s_of));
  m.tensors.emplace_back("s_shares", rows_tensor(share_rows(s_shares), secagg::kShareBytes));
  return m;
}

SecAggReveal SecAggReveal::decode(const Message& m, const std::string&) {
  SecAggReveal r;
  r.round = m.round;
  r.b_of = ids_of(m, "b_of");
  r.s_of = ids_of(m, "s_of");
  r.b_shares = shares_of_rows(rows_of(m, "b_shares", r.b_of.size(), secagg::kShareBytes));
  r.s_shares = shares_of_rows(rows_of(m, "s_shares", r.s_of.size(), secagg::kShareBytes));
  return r;
}

}  // namespace fedra::fedavg
