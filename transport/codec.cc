#include "transport/codec.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <new>
#include <set>

#include <capnp/message.h>
#include <capnp/orphan.h>
#include <kj/exception.h>

#include "transport/schema/fedra.capnp.h"

namespace fedra::transport {

namespace {

constexpr uint64_t kMaxBlobBytes = (uint64_t{1} << 29) - 1;
// Below this size a copy into the message costs less than an extra segment and iovec.
constexpr uint64_t kExternalMinBytes = 4096;

struct DTypeInfo {
  std::string_view name;
  size_t size;
};
constexpr DTypeInfo kDTypes[kNumDTypes] = {
    {"float32", 4}, {"float64", 8}, {"float16", 2}, {"bfloat16", 2},
    {"int8", 1},    {"uint8", 1},   {"int16", 2},   {"int32", 4},
    {"int64", 8},   {"bool", 1},    {"complex64", 8}, {"complex128", 16},
};

uint32_t read_le32(const std::byte* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);  // the wire is little-endian, as is every host Fedra builds for
  return v;
}

std::string shape_string(const std::vector<int64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ","));
}

void check_tensor(const TensorData& t) {
  FEDRA_REQUIRE(!t.name.empty(), "a tensor has an empty name; every tensor needs a unique name");
  const uint64_t expected = t.numel() * dtype_size(t.dtype);
  FEDRA_REQUIRE(t.nbytes == expected, "tensor '{}' has {} bytes but {}{} needs {}", t.name,
                t.nbytes, dtype_name(t.dtype), shape_string(t.shape), expected);
  FEDRA_REQUIRE(t.nbytes == 0 || t.data != nullptr, "tensor '{}' has no data pointer", t.name);
}

// Everything a decoded Envelope's tensors may point into.
struct DecodedStorage {
  std::shared_ptr<std::byte> frame;
  std::vector<std::shared_ptr<std::byte>> joined;  // chunked tensors, concatenated
};

}  // namespace

size_t dtype_size(DType dtype) {
  const auto i = static_cast<int>(dtype);
  FEDRA_REQUIRE(i >= 0 && i < kNumDTypes, "unknown dtype code {}", i);
  return kDTypes[i].size;
}

std::string_view dtype_name(DType dtype) {
  const auto i = static_cast<int>(dtype);
  FEDRA_REQUIRE(i >= 0 && i < kNumDTypes, "unknown dtype code {}", i);
  return kDTypes[i].name;
}

void Limits::validate() const {
  FEDRA_REQUIRE(max_frame_bytes >= 1024, "--max-frame-bytes must be at least 1024, got {}",
                max_frame_bytes);
  FEDRA_REQUIRE(max_frame_bytes <= (uint64_t{1} << 40),
                "--max-frame-bytes {} is over the 1 TiB this transport supports", max_frame_bytes);
  FEDRA_REQUIRE(chunk_bytes >= 8 && chunk_bytes % 8 == 0 && chunk_bytes <= kMaxBlobBytes,
                "tensor chunk size must be a multiple of 8 between 8 and {} bytes, got {}",
                kMaxBlobBytes, chunk_bytes);
  FEDRA_REQUIRE(max_segments >= 2 && max_segments < 512,
                "segment limit must be between 2 and 511, got {}", max_segments);
}

uint64_t TensorData::numel() const {
  uint64_t n = 1;
  for (int64_t d : shape) {
    FEDRA_REQUIRE(d >= 0, "tensor '{}' has a negative dimension in shape {}", name,
                  shape_string(shape));
    if (d != 0 && n > std::numeric_limits<uint64_t>::max() / static_cast<uint64_t>(d)) {
      FEDRA_FAIL("tensor '{}' shape {} overflows 64 bits", name, shape_string(shape));
    }
    n *= static_cast<uint64_t>(d);
  }
  return n;
}

std::shared_ptr<std::byte> allocate_aligned(uint64_t bytes) {
  constexpr std::align_val_t kAlign{64};
  auto* p = static_cast<std::byte*>(::operator new(std::max<uint64_t>(bytes, 64), kAlign));
  return std::shared_ptr<std::byte>(p, [](std::byte* q) { ::operator delete(q, kAlign); });
}

// ---------------------------------------------------------------------------------------------
// Encoding

struct OutFrame::Impl {
  std::shared_ptr<const void> storage;
  capnp::MallocMessageBuilder builder;
  std::vector<uint32_t> table;
  std::vector<ConstBytes> pieces;
  uint64_t size = 0;

  explicit Impl(uint32_t first_segment_words) : builder(first_segment_words) {}
};

OutFrame::OutFrame(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
OutFrame::OutFrame(OutFrame&&) noexcept = default;
OutFrame& OutFrame::operator=(OutFrame&&) noexcept = default;
OutFrame::~OutFrame() = default;

uint64_t OutFrame::size_bytes() const { return impl_->size; }
const std::vector<ConstBytes>& OutFrame::pieces() const { return impl_->pieces; }

std::vector<std::byte> OutFrame::to_bytes() const {
  std::vector<std::byte> out(impl_->size);
  size_t at = 0;
  for (const auto& p : impl_->pieces) {
    if (p.size != 0) std::memcpy(out.data() + at, p.data, p.size);
    at += p.size;
  }
  return out;
}

namespace {

// A first guess of the header's size in words (tensor data that goes external is not in it), after
// checking every tensor and the payload against the frame limit.
size_t encoded_header_words(const Envelope& env, const Limits& limits) {
  uint64_t payload = 0;
  size_t header_words = 64 + env.kind.size() / 8 + env.sender.size() / 8;
  std::set<std::string_view> names;
  for (const auto& t : env.tensors) {
    check_tensor(t);
    FEDRA_REQUIRE(names.insert(t.name).second, "tensor name '{}' appears twice in one message",
                  t.name);
    payload += t.nbytes;
    header_words += 8 + t.shape.size() + t.name.size() / 8 + t.nbytes / limits.chunk_bytes;
    if (t.nbytes < kExternalMinBytes) header_words += t.nbytes / 8 + 1;
  }
  for (const auto& [k, v] : env.options) header_words += 4 + (k.size() + v.size()) / 8;
  header_words += env.metrics.size() * 4;
  FEDRA_REQUIRE(payload <= limits.max_frame_bytes,
                "message '{}' carries {} of tensors, over the frame limit of {} "
                "(raise --max-frame-bytes on both sides, or send fewer/smaller tensors)",
                env.kind, format_bytes(payload), format_bytes(limits.max_frame_bytes));
  return header_words;
}

void write_tensor(const TensorData& t, wire::Tensor::Builder tb, capnp::Orphanage orphanage, const Limits& limits,
                  uint32_t& externals_left) {
  tb.setName(t.name);
  tb.setDtype(static_cast<wire::DType>(t.dtype));
  auto shape = tb.initShape(static_cast<unsigned>(t.shape.size()));
  for (size_t d = 0; d < t.shape.size(); ++d) shape.set(static_cast<unsigned>(d), t.shape[d]);
  const uint64_t nchunks = std::max<uint64_t>(1, (t.nbytes + limits.chunk_bytes - 1) / limits.chunk_bytes);
  auto chunks = tb.initChunks(static_cast<unsigned>(nchunks));
  for (uint64_t c = 0; c < nchunks; ++c) {
    const uint64_t begin = c * limits.chunk_bytes;
    const uint64_t len = std::min(limits.chunk_bytes, t.nbytes - begin);
    const std::byte* p = t.data + begin;
    const bool external = len >= kExternalMinBytes && len % 8 == 0 &&
                          reinterpret_cast<uintptr_t>(p) % 8 == 0 && externals_left > 0;
    if (external) {
      --externals_left;
      chunks.adopt(static_cast<unsigned>(c),
                   orphanage.referenceExternalData(
                       capnp::Data::Reader(reinterpret_cast<const kj::byte*>(p), len)));
    } else {
      auto blob = chunks.init(static_cast<unsigned>(c), static_cast<unsigned>(len));
      if (len != 0) std::memcpy(blob.begin(), p, len);
    }
  }
}

// The frame's segment table and pieces (the table, then each segment), checked against the limit.
void frame_segments(OutFrame::Impl& frame, const Limits& limits, const std::string& kind) {
  auto segments = frame.builder.getSegmentsForOutput();
  FEDRA_ASSERT(segments.size() <= limits.max_segments, "{} segments", segments.size());
  frame.table.assign((segments.size() + 2) & ~size_t{1}, 0);  // whole words
  frame.table[0] = static_cast<uint32_t>(segments.size() - 1);
  uint64_t body = 0;
  for (size_t i = 0; i < segments.size(); ++i) {
    frame.table[i + 1] = static_cast<uint32_t>(segments[i].size());
    body += segments[i].size() * sizeof(capnp::word);
  }
  const uint64_t table_bytes = frame.table.size() * sizeof(uint32_t);
  frame.size = table_bytes + body;
  FEDRA_REQUIRE(frame.size <= limits.max_frame_bytes,
                "message '{}' encodes to {}, over the frame limit of {} (raise --max-frame-bytes "
                "on both sides)",
                kind, format_bytes(frame.size), format_bytes(limits.max_frame_bytes));
  frame.pieces.reserve(segments.size() + 1);
  frame.pieces.push_back({reinterpret_cast<const std::byte*>(frame.table.data()), table_bytes});
  for (const auto& s : segments) {
    frame.pieces.push_back({reinterpret_cast<const std::byte*>(s.begin()),
                            s.size() * sizeof(capnp::word)});
  }
}

}  // namespace

OutFrame encode(const Envelope& env, const Limits& limits) {
  const size_t header_words = encoded_header_words(env, limits);
  auto impl = std::make_unique<OutFrame::Impl>(
      static_cast<uint32_t>(std::min<size_t>(header_words, 1u << 24)));
  impl->storage = env.storage;
  try {
    auto root = impl->builder.initRoot<wire::Envelope>();
    root.setVersion(env.version);
    root.setKind(env.kind);
    root.setRound(env.round);
    root.setStep(env.step);
    root.setSender(env.sender);
    root.setRequestId(env.request_id);
    root.setPartial(env.partial);

    auto orphanage = impl->builder.getOrphanage();
    // Externals become segments; leave room for the root segment and copied-data segments.
    uint32_t externals_left = limits.max_segments - 16;
    auto tensors = root.initTensors(static_cast<unsigned>(env.tensors.size()));
    for (size_t i = 0; i < env.tensors.size(); ++i) {
      write_tensor(env.tensors[i], tensors[static_cast<unsigned>(i)], orphanage, limits, externals_left);
    }
    auto metrics = root.initMetrics(static_cast<unsigned>(env.metrics.size()));
    for (size_t i = 0; i < env.metrics.size(); ++i) {
      metrics[static_cast<unsigned>(i)].setName(env.metrics[i].first);
      metrics[static_cast<unsigned>(i)].setValue(env.metrics[i].second);
    }
    auto options = root.initOptions(static_cast<unsigned>(env.options.size()));
    for (size_t i = 0; i < env.options.size(); ++i) {
      options[static_cast<unsigned>(i)].setKey(env.options[i].first);
      options[static_cast<unsigned>(i)].setValue(env.options[i].second);
    }
    if (env.error) {
      auto e = root.initError();
      e.setKind(static_cast<wire::ErrorKind>(env.error->kind));
      e.setMessage(env.error->message);
    }
  } catch (const kj::Exception& e) {
    FEDRA_FAIL("cannot encode message '{}': {}", env.kind, e.getDescription().cStr());
  }

  frame_segments(*impl, limits, env.kind);
  return OutFrame(std::move(impl));
}

// ---------------------------------------------------------------------------------------------
// Framing

uint64_t frame_table_bytes(const std::byte* first4, const Limits& limits) {
  const uint64_t segments = uint64_t{read_le32(first4)} + 1;
  FEDRA_REQUIRE(segments <= limits.max_segments,
                "malformed frame: header announces {} segments, the limit is {} (is the peer "
                "speaking the Fedra protocol?)",
                segments, limits.max_segments);
  return ((segments + 2) & ~uint64_t{1}) * 4;
}

FrameHeader parse_frame_header(const std::byte* table, uint64_t table_bytes,
                               const Limits& limits) {
  FEDRA_REQUIRE(table_bytes >= 8, "malformed frame: segment table of {} bytes", table_bytes);
  const uint64_t expected = frame_table_bytes(table, limits);
  FEDRA_REQUIRE(table_bytes == expected, "malformed frame: segment table of {} bytes, expected {}",
                table_bytes, expected);
  FrameHeader h;
  const uint32_t segments = read_le32(table) + 1;
  h.table_bytes = table_bytes;
  h.segment_words.resize(segments);
  for (uint32_t i = 0; i < segments; ++i) {
    h.segment_words[i] = read_le32(table + 4 * (i + 1));
    h.body_bytes += uint64_t{h.segment_words[i]} * 8;
  }
  FEDRA_REQUIRE(h.total_bytes() <= limits.max_frame_bytes,
                "frame of {} bytes ({}) exceeds the frame limit of {} bytes; the sender must send "
                "less, or both sides raise --max-frame-bytes",
                h.total_bytes(), format_bytes(h.total_bytes()), limits.max_frame_bytes);
  FEDRA_REQUIRE(h.segment_words[0] > 0, "malformed frame: the first segment is empty");
  return h;
}

InFrame::InFrame(FrameHeader header, std::shared_ptr<std::byte> body)
    : header_(std::move(header)), body_(std::move(body)) {}

InFrame InFrame::from_bytes(const std::byte* data, size_t size, const Limits& limits) {
  FEDRA_REQUIRE(size >= 8, "truncated frame: {} bytes, a frame has at least 8", size);
  const uint64_t table = frame_table_bytes(data, limits);
  FEDRA_REQUIRE(size >= table, "truncated frame: {} bytes, the segment table alone needs {}",
                size, table);
  FrameHeader header = parse_frame_header(data, table, limits);
  FEDRA_REQUIRE(size >= header.total_bytes(), "truncated frame: {} of {} bytes", size,
                header.total_bytes());
  FEDRA_REQUIRE(size == header.total_bytes(), "{} trailing bytes after a frame of {} bytes",
                size - header.total_bytes(), header.total_bytes());
  auto body = allocate_aligned(header.body_bytes);
  std::memcpy(body.get(), data + table, header.body_bytes);
  return InFrame(std::move(header), std::move(body));
}

// ---------------------------------------------------------------------------------------------
// Decoding

Envelope decode(const InFrame& frame, const Limits& limits) {
  Envelope env;
  decode_into(frame, limits, env);
  return env;
}

namespace {

// The tensors of one frame as decode_into reads them, counting what they took (see there).
struct TensorReader {
  const InFrame& frame;
  const std::string& kind;
  DecodedStorage& storage;
  uint64_t decoded;
  std::set<std::string> names;

  void check(uint64_t bytes, const std::string& what) const {
    FEDRA_REQUIRE(bytes <= frame.size_bytes(),
                  "malformed frame of {} bytes: its contents (up to '{}') add up to {} bytes, more than "
                  "the frame holds; parts of it overlap, which Fedra's encoder never writes",
                  frame.size_bytes(), what, bytes);
  }

  TensorData read(wire::Tensor::Reader tr) {
    TensorData t;
    t.name = tr.getName().cStr();
    const auto code = static_cast<int>(tr.getDtype());
    FEDRA_REQUIRE(code >= 0 && code < kNumDTypes, "tensor '{}' has dtype code {}, unknown to this Fedra (protocol {})",
                  t.name, code, kProtocolVersion);
    t.dtype = static_cast<DType>(code);
    const auto shape = tr.getShape();
    decoded += 8 + t.name.size() + 8 * shape.size();
    check(decoded, t.name);
    for (int64_t d : shape) t.shape.push_back(d);
    FEDRA_REQUIRE(!t.name.empty(), "a tensor in message '{}' has an empty name", kind);
    FEDRA_REQUIRE(names.insert(t.name).second, "tensor name '{}' appears twice in message '{}'", t.name, kind);
    // Each chunk is read once: Cap'n Proto charges the traversal limit on every read of a
    // blob, so reading them twice made frames above half of --max-frame-bytes fail (issue 21).
    std::vector<capnp::Data::Reader> chunks;
    uint64_t received = 0;
    for (auto c : tr.getChunks()) {
      chunks.push_back(c);
      received += c.size();
    }
    decoded += 8 * chunks.size() + received;
    check(decoded, t.name);
    const uint64_t expected = t.numel() * dtype_size(t.dtype);
    FEDRA_REQUIRE(received == expected, "tensor '{}' in message '{}' has {} bytes but {}{} needs {}", t.name, kind,
                  received, dtype_name(t.dtype), shape_string(t.shape), expected);
    t.nbytes = received;
    if (chunks.size() == 1) {
      t.data = reinterpret_cast<const std::byte*>(chunks[0].begin());
    } else if (chunks.size() > 1) {
      auto joined = allocate_aligned(received);
      uint64_t off = 0;
      for (auto c : chunks) {
        if (c.size() == 0) continue;  // an empty chunk's data pointer is null (found by tests/fuzz)
        std::memcpy(joined.get() + off, c.begin(), c.size());
        off += c.size();
      }
      t.data = joined.get();
      storage.joined.push_back(std::move(joined));
    }
    return t;
  }
};

}  // namespace

void decode_into(const InFrame& frame, const Limits& limits, Envelope& env) {
  FEDRA_REQUIRE(frame.body() != nullptr, "decode of an empty frame");
  const auto& words = frame.header().segment_words;
  std::vector<kj::ArrayPtr<const capnp::word>> segments;
  segments.reserve(words.size());
  auto* at = reinterpret_cast<const capnp::word*>(frame.body());
  for (uint32_t w : words) {
    segments.emplace_back(at, w);
    at += w;
  }
  capnp::ReaderOptions options;
  options.traversalLimitInWords = limits.traversal_limit_words();
  options.nestingLimit = 16;

  auto storage = std::make_shared<DecodedStorage>();
  storage->frame = frame.body_buffer();
  try {
    capnp::SegmentArrayMessageReader reader(
        kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>>(segments.data(), segments.size()),
        options);
    auto root = reader.getRoot<wire::Envelope>();
    env.version = root.getVersion();
    env.kind = root.getKind().cStr();
    env.round = root.getRound();
    env.step = root.getStep();
    env.sender = root.getSender().cStr();
    env.request_id = root.getRequestId();
    env.partial = root.getPartial();

    // Cap'n Proto lets several pointers name the same bytes, and a list of empty structs costs
    // no bytes at all. Fedra's encoder writes neither, so `decoded` counts a lower bound of what
    // each part took on the wire (8 bytes per list element or pointer, plus its contents) and
    // a frame whose parts add up to more than the frame is refused before anything is copied:
    // a few hundred bytes could otherwise make the receiver build and hold up to
    // --max-frame-bytes of tensors or options (found by tests/fuzz).
    TensorReader tensors{frame, env.kind, *storage, env.kind.size() + env.sender.size(), {}};
    for (auto tr : root.getTensors()) env.tensors.push_back(tensors.read(tr));
    uint64_t decoded = tensors.decoded;
    auto check_decoded = [&](const char* what) { tensors.check(decoded, what); };
    for (auto m : root.getMetrics()) {
      decoded += 16 + m.getName().size();
      check_decoded("metrics");
      env.metrics.emplace_back(m.getName().cStr(), m.getValue());
    }
    for (auto o : root.getOptions()) {
      decoded += 16 + o.getKey().size() + o.getValue().size();
      check_decoded("options");
      env.options.emplace_back(o.getKey().cStr(), o.getValue().cStr());
    }
    if (root.hasError()) {
      auto e = root.getError();
      const auto kind = static_cast<int>(e.getKind());
      env.error = WireError{kind >= 0 && kind <= 3 ? static_cast<ErrorKind>(kind) : ErrorKind::kFailed,
                            e.getMessage().cStr()};
    }
  } catch (const kj::Exception& e) {
    FEDRA_FAIL("malformed frame of {} bytes: {}", frame.size_bytes(), e.getDescription().cStr());
  }
  env.storage = std::move(storage);
}

std::string format_bytes(uint64_t bytes) {
  if (bytes < 1024) return fmt::format("{} B", bytes);
  const char* units[] = {"KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes) / 1024.0;
  int u = 0;
  while (v >= 1024.0 && u < 3) {
    v /= 1024.0;
    ++u;
  }
  return fmt::format("{:.1f} {}", v, units[u]);
}

}  // namespace fedra::transport
