// RingAllReduce (core/net/peer.h): buckets summed around a PeerRing, reduce-scatter then
// all-gather, each received chunk added in place as its frame arrives.
#include <cstring>

#include <torch/torch.h>

#include "core/kit/error.h"
#include "core/net/peer.h"

namespace fedra {

using Clock = std::chrono::steady_clock;

namespace {

double metric_of(const transport::Envelope& env, const std::string& key) {
  for (const auto& [k, v] : env.metrics) {
    if (k == key) return v;
  }
  FEDRA_FAIL("a '{}' frame from {} lacks '{}'", env.kind, env.sender, key);
}

// a += b over a chunk, in one pass that also tells whether every sum is finite (an exponent of
// all ones is an infinity or a NaN). Plain loops the compiler vectorises.
template <class T, class Bits, Bits kExponent>
bool add_checked(T* __restrict a, const T* __restrict b, int64_t n) {
  Bits bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    const T s = a[i] + b[i];
    a[i] = s;
    Bits bits;
    std::memcpy(&bits, &s, sizeof(bits));
    bad |= static_cast<Bits>((bits & kExponent) == kExponent);
  }
  return bad == 0;
}

bool add_in_place(const at::Tensor& chunk, const std::byte* data) {
  if (chunk.scalar_type() == at::kFloat) {
    return add_checked<float, uint32_t, 0x7f800000u>(chunk.data_ptr<float>(), reinterpret_cast<const float*>(data),
                                                      chunk.numel());
  }
  return add_checked<double, uint64_t, 0x7ff0000000000000ull>(chunk.data_ptr<double>(),
                                                               reinterpret_cast<const double*>(data), chunk.numel());
}

}  // namespace

RingAllReduce::RingAllReduce(PeerRing& ring, size_t buckets) : ring_(ring), buckets_(buckets) {}

void RingAllReduce::begin_step(uint64_t step) {
  step_ = step;
  done_ = 0;
  for (auto& b : buckets_) {
    b.flat = at::Tensor();
    b.chunks.clear();
    b.offsets.clear();
    b.phase_recv = 0;
    b.started = false;
    b.early.clear();
  }
  std::deque<transport::Envelope> ahead;
  ahead.swap(ahead_);
  for (auto& env : ahead) on_frame(std::move(env));
  if (!listening_) {  // frames that came with the links are the first step's
    listening_ = true;
    ring_.on_frame([this](transport::Envelope&& env) { on_frame(std::move(env)); });
  }
}

// Phase p sends and receives one chunk: reduce-scatter for p < n - 1, all-gather after.
size_t RingAllReduce::chunk_sent(int phase) const {
  const auto n = static_cast<int64_t>(ring_.size()), r = static_cast<int64_t>(ring_.rank());
  const int64_t c = phase < n - 1 ? r - phase : r + 1 - (phase - (n - 1));
  return static_cast<size_t>(((c % n) + n) % n);
}
size_t RingAllReduce::chunk_received(int phase) const {
  const auto n = static_cast<int64_t>(ring_.size()), r = static_cast<int64_t>(ring_.rank());
  const int64_t c = phase < n - 1 ? r - phase - 1 : r - (phase - (n - 1));
  return static_cast<size_t>(((c % n) + n) % n);
}

void RingAllReduce::start(size_t b, at::Tensor flat) {
  FEDRA_REQUIRE(b < buckets_.size(), "ring bucket {} of {}", b, buckets_.size());
  FEDRA_REQUIRE(flat.dim() == 1 && flat.is_contiguous() &&
                    (flat.scalar_type() == at::kFloat || flat.scalar_type() == at::kDouble),
                "ring all-reduce takes a contiguous 1-D float tensor");
  Bucket& bucket = buckets_[b];
  FEDRA_REQUIRE(!bucket.started, "ring bucket {} started twice in step {}", b, step_);
  bucket.flat = flat;
  bucket.started = true;
  const auto n = static_cast<int64_t>(ring_.size());
  if (n == 1) {
    ++done_;
    return;
  }
  // Chunks of whole 64-byte lines, so every chunk starts aligned and travels without a copy.
  const int64_t numel = flat.numel();
  const int64_t line = 64 / static_cast<int64_t>(flat.element_size());
  const int64_t per = (numel + n * line - 1) / (n * line) * line;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t lo = std::min(numel, i * per), hi = std::min(numel, (i + 1) * per);
    bucket.chunks.push_back(flat.narrow(0, lo, hi - lo));
    bucket.offsets.push_back(lo);
  }
  send_phase(b, 0);
  std::deque<transport::Envelope> early;
  early.swap(bucket.early);
  for (auto& env : early) apply(b, std::move(env));
}

void RingAllReduce::send_phase(size_t b, int phase) {
  const at::Tensor& chunk = buckets_[b].chunks[chunk_sent(phase)];
  transport::Envelope env;
  env.kind = peer::kChunk;
  env.step = step_;
  env.metrics = {{"bucket", static_cast<double>(b)}, {"phase", static_cast<double>(phase)}};
  transport::TensorData t;
  t.name = "chunk";
  t.dtype = chunk.scalar_type() == at::kFloat ? transport::DType::kFloat32 : transport::DType::kFloat64;
  t.shape = {chunk.numel()};
  t.data = static_cast<const std::byte*>(chunk.data_ptr());
  t.nbytes = static_cast<uint64_t>(chunk.nbytes());
  env.tensors.push_back(std::move(t));
  ++writes_pending_;
  ring_.send(env, [this] { --writes_pending_; });
}

void RingAllReduce::on_frame(transport::Envelope&& env) {
  if (env.error) {
    ring_.fail(fmt::format("{} reported: {}", ring_.prev().name, env.error->message));
    return;
  }
  if (env.kind != peer::kChunk) {
    ring_.fail(fmt::format("unexpected '{}' from {}", env.kind, ring_.prev().name));
    return;
  }
  if (env.step > step_) {
    ahead_.push_back(std::move(env));
    return;
  }
  try {
    FEDRA_REQUIRE(env.step == step_, "{} sent a chunk of step {} during step {}", ring_.prev().name, env.step, step_);
    const double bv = metric_of(env, "bucket");
    FEDRA_REQUIRE(bv >= 0 && bv < static_cast<double>(buckets_.size()), "{} sent bucket {} of {}", ring_.prev().name,
                  bv, buckets_.size());
    const auto b = static_cast<size_t>(bv);
    if (!buckets_[b].started) {
      buckets_[b].early.push_back(std::move(env));
      return;
    }
    apply(b, std::move(env));
  } catch (const Error& e) {
    ring_.fail(e.what());
  }
}

void RingAllReduce::apply(size_t b, transport::Envelope&& env) {
  Bucket& bucket = buckets_[b];
  const int phase = static_cast<int>(metric_of(env, "phase"));
  const int phases = 2 * (static_cast<int>(ring_.size()) - 1);
  FEDRA_REQUIRE(phase == bucket.phase_recv, "{} sent phase {} of bucket {} (step {}), expected phase {}",
                ring_.prev().name, phase, b, step_, bucket.phase_recv);
  at::Tensor& chunk = bucket.chunks[chunk_received(phase)];
  FEDRA_REQUIRE(env.tensors.size() == 1, "a ring chunk from {} holds {} tensors", ring_.prev().name, env.tensors.size());
  const transport::TensorData& t = env.tensors[0];
  const auto want = chunk.scalar_type() == at::kFloat ? transport::DType::kFloat32 : transport::DType::kFloat64;
  FEDRA_REQUIRE(t.dtype == want && t.shape.size() == 1 && t.shape[0] == chunk.numel() &&
                    t.nbytes == static_cast<uint64_t>(chunk.nbytes()),
                "{} sent a chunk of {} {} for bucket {} phase {}, expected {} {}", ring_.prev().name,
                t.shape.empty() ? 0 : t.shape[0], transport::dtype_name(t.dtype), b, phase, chunk.numel(),
                transport::dtype_name(want));
  if (phase < static_cast<int>(ring_.size()) - 1) {
    // Summed in place as the frame arrives. The last phase leaves this rank the finished sum of
    // the chunk, checked as it is made: one check covers every contribution, since a NaN or
    // infinity anywhere makes the sum non-finite.
    const bool last = phase == static_cast<int>(ring_.size()) - 2;
    FEDRA_REQUIRE(add_in_place(chunk, t.data) || !last,
                  "the reduced gradient (bucket {}, step {}) is not finite: a worker sent NaN or infinity", b, step_);
  } else {
    // The all-gather's finished chunk stays in its frame's buffer: no copy; it is sent on from
    // there and read from there.
    auto storage = env.storage;
    chunk = at::from_blob(const_cast<std::byte*>(t.data), {chunk.numel()}, [storage](void*) {}, chunk.options());
  }
  ++bucket.phase_recv;
  if (bucket.phase_recv < phases) {
    send_phase(b, bucket.phase_recv);
  } else {
    ++done_;
  }
}

void RingAllReduce::progress() { ring_.progress(); }

std::vector<RingAllReduce::Chunk> RingAllReduce::result(size_t b) const {
  const Bucket& bucket = buckets_[b];
  if (ring_.size() == 1) return {{0, bucket.flat}};
  std::vector<Chunk> out;
  for (size_t i = 0; i < bucket.chunks.size(); ++i) out.push_back({bucket.offsets[i], bucket.chunks[i]});
  return out;
}

void RingAllReduce::finish(std::chrono::milliseconds timeout) {
  ring_.wait([this] { return done_ == buckets_.size() && writes_pending_ == 0; }, Clock::now() + timeout,
             fmt::format("ring all-reduce of step {}", step_));
}

}  // namespace fedra
