// libFuzzer target: a frame off the wire, decoded and validated as the runtime does it.
//
//   tests/fuzz/run.sh [SECONDS]      builds this with clang (-fsanitize=fuzzer,address,undefined)
//                                    and fuzzes it, starting from valid frames (make_seeds.cc)
//
// Every input goes through the receive path of transport/tcp: the segment table's first word
// (frame_table_bytes), the whole table (parse_frame_header), the size checks, then decode(),
// which validates the Envelope (kinds, dtypes, shapes against byte counts, tensor names,
// chunks, the error struct). Bad input must end in fedra::Error, the runtime's "reject and tell
// the peer" path; anything else escaping (kj::Exception, std::bad_alloc, length_error), a
// sanitizer report or a hang is a bug. An input that decodes must also hold together: every
// tensor's bytes lie inside the frame and match dtype x shape, and encoding it again and
// decoding the result gives the same Envelope.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <iostream>

#include "transport/codec.h"

namespace {

using namespace fedra::transport;

[[noreturn]] void broken(const char* what) {
  std::cerr << "frame_fuzz: invariant broken: " << what << "\n";
  std::abort();
}

bool same(const Envelope& a, const Envelope& b) {
  if (a.version != b.version || a.kind != b.kind || a.round != b.round || a.step != b.step ||
      a.sender != b.sender || a.request_id != b.request_id || a.partial != b.partial ||
      a.tensors.size() != b.tensors.size() || a.metrics.size() != b.metrics.size() ||
      a.options != b.options || a.error.has_value() != b.error.has_value()) {
    return false;
  }
  for (size_t i = 0; i < a.metrics.size(); ++i) {
    // NaN metrics are legal on the wire; compare bits.
    if (a.metrics[i].first != b.metrics[i].first ||
        std::memcmp(&a.metrics[i].second, &b.metrics[i].second, sizeof(double)) != 0) {
      return false;
    }
  }
  for (size_t i = 0; i < a.tensors.size(); ++i) {
    const TensorData& x = a.tensors[i];
    const TensorData& y = b.tensors[i];
    if (x.name != y.name || x.dtype != y.dtype || x.shape != y.shape || x.nbytes != y.nbytes ||
        (x.nbytes > 0 && std::memcmp(x.data, y.data, x.nbytes) != 0)) {
      return false;
    }
  }
  return !a.error || (a.error->kind == b.error->kind && a.error->message == b.error->message);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Limits limits;
  limits.max_frame_bytes = 1 << 20;  // small, so that huge declared sizes are refused quickly
  limits.chunk_bytes = 1 << 10;      // and multi-chunk tensors are reachable with small inputs
  Envelope env;
  try {
    const InFrame frame = InFrame::from_bytes(reinterpret_cast<const std::byte*>(data), size, limits);
    env = decode(frame, limits);
  } catch (const fedra::Error&) {
    return 0;  // rejected with a message: what the runtime does with a bad frame
  }
  // run.sh's check that the seeds reach this far (a harness that rejects everything fuzzes nothing).
  static const bool selftest = std::getenv("FEDRA_FUZZ_SELFTEST") != nullptr;
  if (selftest) std::cerr << "frame_fuzz: decoded '" << env.kind << "' with " << env.tensors.size() << " tensor(s)\n";
  uint64_t checksum = 0;
  for (const TensorData& t : env.tensors) {
    if (t.nbytes != t.numel() * dtype_size(t.dtype)) broken("tensor bytes do not match dtype x shape");
    if (t.nbytes > 0 && t.data == nullptr) broken("tensor without data");
    for (uint64_t i = 0; i < t.nbytes; ++i) checksum += static_cast<uint8_t>(t.data[i]);  // ASan: in bounds
  }
  (void)checksum;
  try {
    const OutFrame again = encode(env, limits);
    const std::vector<std::byte> bytes = again.to_bytes();
    const Envelope back = decode(InFrame::from_bytes(bytes.data(), bytes.size(), limits), limits);
    if (!same(env, back)) broken("a decoded frame, encoded and decoded again, changed");
  } catch (const fedra::Error& e) {
    std::cerr << "frame_fuzz: a frame that decoded does not encode again: " << e.what() << "\n";
    std::abort();
  }
  return 0;
}
