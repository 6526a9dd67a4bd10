// The tensor <-> Cap'n Proto codec: an Envelope in memory, a frame on the wire.
//
// Encoding references tensor memory instead of copying it: every tensor chunk that is 8-byte
// aligned and a whole number of words becomes an external segment of the Cap'n Proto message
// (capnp::Orphanage::referenceExternalData), and the frame is written as a gathered write of
// the segment table plus all segments. Small or unaligned tensors are copied into the message,
// which is cheaper than another segment. The caller keeps the tensor memory alive through
// Envelope::storage, which the OutFrame holds until it is destroyed.
//
// Decoding reads the frame into one 64-byte aligned buffer and returns an Envelope whose
// TensorData point into that buffer; Envelope::storage owns it. A tensor split into several
// chunks (over Limits::chunk_bytes) is the one case that is copied, into one buffer of its own.
//
// Every limit is explicit (Limits): a frame larger than max_frame_bytes is refused before any
// allocation, the Cap'n Proto traversal limit is derived from it, and a violated limit is an
// Error naming the limit and the option that sets it.
//
// Thread safety: the functions are pure; OutFrame and InFrame are movable values, not shared.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "transport/error.h"

namespace fedra::transport {

// Bumped whenever a peer of the previous version could misread a message.
inline constexpr uint32_t kProtocolVersion = 2;  // 2: Envelope.partial (exchanges in parts)

// The kind of a message that reports a failure (`error` set): sent before a connection is
// dropped, or as the reply to a request that failed.
inline constexpr const char* kErrorKind = "error";

enum class DType : uint8_t {
  kFloat32 = 0,
  kFloat64 = 1,
  kFloat16 = 2,
  kBFloat16 = 3,
  kInt8 = 4,
  kUInt8 = 5,
  kInt16 = 6,
  kInt32 = 7,
  kInt64 = 8,
  kBool = 9,
  kComplex64 = 10,
  kComplex128 = 11,
};
inline constexpr int kNumDTypes = 12;

size_t dtype_size(DType dtype);
std::string_view dtype_name(DType dtype);

struct Limits {
  // Largest frame accepted or produced, in bytes (option --max-frame-bytes).
  uint64_t max_frame_bytes = uint64_t{2} << 30;
  // Tensors above this many bytes are split into chunks; must be a multiple of 8 below 2^29
  // (Cap'n Proto's largest Data blob).
  uint64_t chunk_bytes = uint64_t{256} << 20;
  // Cap'n Proto's own stream reader refuses 512 segments or more; we stay below so that
  // `capnp decode` reads every frame we write.
  uint32_t max_segments = 500;

  // The traversal limit covers the whole frame once, plus slack for the segment table.
  uint64_t traversal_limit_words() const { return max_frame_bytes / 8 + 1024; }
  void validate() const;
};

// A tensor in wire form. For encoding, `data` is borrowed from the caller; after decoding, it
// points into the Envelope's storage.
struct TensorData {
  std::string name;
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;
  const std::byte* data = nullptr;
  uint64_t nbytes = 0;

  // Elements implied by the shape; throws if the product overflows.
  uint64_t numel() const;
};

struct WireError {
  ErrorKind kind = ErrorKind::kFailed;
  std::string message;
};

struct Envelope {
  uint32_t version = kProtocolVersion;
  std::string kind;
  uint32_t round = 0;
  uint64_t step = 0;
  std::string sender;
  uint64_t request_id = 0;
  bool partial = false;  // more messages of this request follow (see fedra.capnp)
  std::vector<TensorData> tensors;
  std::vector<std::pair<std::string, double>> metrics;
  std::vector<std::pair<std::string, std::string>> options;
  std::optional<WireError> error;
  // Keeps the bytes behind `tensors` alive (the caller's tensors when encoding, the received
  // frame when decoded).
  std::shared_ptr<const void> storage;
};

struct ConstBytes {
  const std::byte* data;
  size_t size;
};

// An encoded frame, ready to write: the stream-framing segment table followed by the segments,
// in order. Move-only; owns the Cap'n Proto builder and keeps the referenced tensors alive.
class OutFrame {
 public:
  OutFrame(OutFrame&&) noexcept;
  OutFrame& operator=(OutFrame&&) noexcept;
  ~OutFrame();

  uint64_t size_bytes() const;
  const std::vector<ConstBytes>& pieces() const;
  // All pieces concatenated: for files, tests and tools, not for the hot path.
  std::vector<std::byte> to_bytes() const;

  struct Impl;

 private:
  explicit OutFrame(std::unique_ptr<Impl> impl);
  friend OutFrame encode(const Envelope& envelope, const Limits& limits);
  std::unique_ptr<Impl> impl_;
};

// Throws Error(kFailed) if a tensor's byte count does not match dtype x shape, a name is empty
// or repeated, or the frame would exceed limits.max_frame_bytes.
OutFrame encode(const Envelope& envelope, const Limits& limits);

// The segment table at the start of a frame (Cap'n Proto stream framing): a little-endian
// uint32 holding (segment count - 1), one uint32 size in words per segment, padding to 8 bytes.
struct FrameHeader {
  std::vector<uint32_t> segment_words;
  uint64_t table_bytes = 0;
  uint64_t body_bytes = 0;
  uint64_t total_bytes() const { return table_bytes + body_bytes; }
};

// Size of the whole segment table, given its first 4 bytes. Throws if the segment count is
// over limits.max_segments (random bytes usually end here).
uint64_t frame_table_bytes(const std::byte* first4, const Limits& limits);
// Parses a complete segment table; throws if the frame would exceed limits.max_frame_bytes.
FrameHeader parse_frame_header(const std::byte* table, uint64_t table_bytes, const Limits& limits);

// A 64-byte aligned, uninitialised byte buffer shared by the frames and tensors that use it.
std::shared_ptr<std::byte> allocate_aligned(uint64_t bytes);

// A received frame: its parsed header and one aligned buffer holding the segments.
class InFrame {
 public:
  InFrame() = default;
  // `body` must hold header.body_bytes bytes.
  InFrame(FrameHeader header, std::shared_ptr<std::byte> body);
  // Copies a complete frame from memory (files, tests, tools). Throws on truncation or limits.
  static InFrame from_bytes(const std::byte* data, size_t size, const Limits& limits);

  const FrameHeader& header() const { return header_; }
  uint64_t size_bytes() const { return header_.total_bytes(); }
  std::byte* body() const { return body_.get(); }
  const std::shared_ptr<std::byte>& body_buffer() const { return body_; }

 private:
  FrameHeader header_;
  std::shared_ptr<std::byte> body_;
};

// Throws Error(kFailed) naming the problem for a malformed message, an unknown dtype, a tensor
// whose byte count does not match dtype x shape, or a repeated tensor name.
Envelope decode(const InFrame& frame, const Limits& limits);
// As decode(), filling `out` as it goes: when it throws, the header fields read before the
// problem (kind, sender, request_id) are set, so a runtime can tell which request failed.
void decode_into(const InFrame& frame, const Limits& limits, Envelope& out);

// "3 B", "4.2 KiB", "1.5 GiB": byte counts in messages and progress lines.
std::string format_bytes(uint64_t bytes);

}  // namespace fedra::transport
