#include "tests/testing.h"

#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>

#include <capnp/message.h>
#include <capnp/serialize.h>

#include "tests/test_util.h"
#include "transport/codec.h"
#include "transport/schema/fedra.capnp.h"

using namespace fedra;
using namespace fedra::transport;

namespace {

// Bytes with a recognisable pattern, 64-byte aligned like a torch allocation.
std::shared_ptr<std::byte> pattern(uint64_t n, uint32_t seed) {
  auto buf = allocate_aligned(n);
  std::mt19937 rng(seed);
  for (uint64_t i = 0; i < n; ++i) buf.get()[i] = static_cast<std::byte>(rng());
  return buf;
}

Envelope round_trip(const Envelope& in, const Limits& limits = {}) {
  const OutFrame out = encode(in, limits);
  const std::vector<std::byte> bytes = out.to_bytes();
  CHECK(bytes.size() == out.size_bytes());
  return decode(InFrame::from_bytes(bytes.data(), bytes.size(), limits), limits);
}

TensorData tensor(std::string name, DType dtype, std::vector<int64_t> shape, const std::byte* data) {
  TensorData t;
  t.name = std::move(name);
  t.dtype = dtype;
  t.shape = std::move(shape);
  t.data = data;
  t.nbytes = t.numel() * dtype_size(dtype);
  return t;
}

// A frame built with Cap'n Proto directly, to say what our own encoder refuses to say.
std::vector<std::byte> raw_frame(int dtype_code, std::vector<int64_t> shape, size_t data_bytes) {
  capnp::MallocMessageBuilder b;
  auto root = b.initRoot<wire::Envelope>();
  root.setVersion(kProtocolVersion);
  root.setKind("fedavg.fit_result");
  root.setRequestId(7);
  auto t = root.initTensors(1)[0];
  t.setName("w");
  t.setDtype(static_cast<wire::DType>(dtype_code));
  auto s = t.initShape(static_cast<unsigned>(shape.size()));
  for (size_t i = 0; i < shape.size(); ++i) s.set(static_cast<unsigned>(i), shape[i]);
  t.initChunks(1).init(0, static_cast<unsigned>(data_bytes));
  auto words = capnp::messageToFlatArray(b);
  auto bytes = words.asBytes();
  return std::vector<std::byte>(reinterpret_cast<const std::byte*>(bytes.begin()),
                                reinterpret_cast<const std::byte*>(bytes.end()));
}

}  // namespace

TEST_CASE("every dtype round-trips through a frame with its bytes intact") {
  for (int code = 0; code < kNumDTypes; ++code) {
    const auto dtype = static_cast<DType>(code);
    CAPTURE(dtype_name(dtype));
    const std::vector<int64_t> shape = {3, 5, 7};
    const uint64_t n = 3 * 5 * 7 * dtype_size(dtype);
    auto data = pattern(n, static_cast<uint32_t>(code));
    Envelope in;
    in.kind = "test";
    in.tensors.push_back(tensor("t", dtype, shape, data.get()));
    const Envelope got = round_trip(in);
    REQUIRE(got.tensors.size() == 1);
    CHECK(got.tensors[0].dtype == dtype);
    CHECK(got.tensors[0].shape == shape);
    REQUIRE(got.tensors[0].nbytes == n);
    CHECK(std::memcmp(got.tensors[0].data, data.get(), n) == 0);
  }
}

TEST_CASE("header fields, metrics, options and errors round-trip") {
  Envelope in;
  in.version = kProtocolVersion;
  in.kind = "fedavg.fit";
  in.round = 12;
  in.step = 1234567890123ULL;
  in.sender = "worker-3";
  in.request_id = 99;
  in.metrics = {{"num_examples", 6000}, {"train_loss", 0.25}};
  in.options = {{"lr", "0.05"}, {"optimizer", "sgd"}};
  in.error = WireError{ErrorKind::kOverloaded, "too slow"};
  const Envelope got = round_trip(in);
  CHECK(got.version == kProtocolVersion);
  CHECK(got.kind == "fedavg.fit");
  CHECK(got.round == 12);
  CHECK(got.step == 1234567890123ULL);
  CHECK(got.sender == "worker-3");
  CHECK(got.request_id == 99);
  CHECK(got.metrics == in.metrics);
  CHECK(got.options == in.options);
  REQUIRE(got.error.has_value());
  CHECK(got.error->kind == ErrorKind::kOverloaded);
  CHECK(got.error->message == "too slow");
}

TEST_CASE("empty and scalar shapes round-trip") {
  auto data = pattern(64, 1);
  for (const std::vector<int64_t>& shape :
       {std::vector<int64_t>{}, {0}, {0, 7}, {3, 0, 2}, {1}, {1, 1, 1, 1}}) {
    CAPTURE(shape.size());
    Envelope in;
    in.kind = "shapes";
    in.tensors.push_back(tensor("t", DType::kFloat64, shape, data.get()));
    const Envelope got = round_trip(in);
    REQUIRE(got.tensors.size() == 1);
    CHECK(got.tensors[0].shape == shape);
    CHECK(got.tensors[0].nbytes == in.tensors[0].nbytes);
    if (in.tensors[0].nbytes > 0) {
      CHECK(std::memcmp(got.tensors[0].data, data.get(), in.tensors[0].nbytes) == 0);
    }
  }
}

TEST_CASE("large tensors are referenced by the frame, not copied into it") {
  const uint64_t n = 1 << 20;
  auto data = pattern(n, 2);
  Envelope in;
  in.kind = "big";
  in.tensors.push_back(tensor("w", DType::kFloat32, {static_cast<int64_t>(n / 4)}, data.get()));
  const OutFrame out = encode(in, Limits{});
  bool referenced = false;
  for (const auto& p : out.pieces()) referenced |= p.data == data.get() && p.size == n;
  CHECK(referenced);
  // Decoding points into the received buffer rather than copying again.
  const std::vector<std::byte> bytes = out.to_bytes();
  const InFrame frame = InFrame::from_bytes(bytes.data(), bytes.size(), Limits{});
  const Envelope got = decode(frame, Limits{});
  CHECK(got.tensors[0].data >= frame.body());
  CHECK(got.tensors[0].data + n <= frame.body() + frame.header().body_bytes);
}

TEST_CASE("small and unaligned tensors are copied, and still round-trip") {
  auto data = pattern(4096 + 16, 3);
  Envelope in;
  in.kind = "odd";
  in.tensors.push_back(tensor("unaligned", DType::kUInt8, {5000 % 4096}, data.get() + 3));
  in.tensors.push_back(tensor("odd_size", DType::kInt8, {4099}, data.get()));
  const Envelope got = round_trip(in);
  CHECK(std::memcmp(got.tensors[0].data, data.get() + 3, 904) == 0);
  CHECK(std::memcmp(got.tensors[1].data, data.get(), 4099) == 0);
}

TEST_CASE("tensors above the chunk size are split into chunks and joined on decode") {
  Limits limits;
  limits.chunk_bytes = 1024;
  const uint64_t n = 10000 * 4;
  auto data = pattern(n, 4);
  Envelope in;
  in.kind = "chunked";
  in.tensors.push_back(tensor("w", DType::kFloat32, {100, 100}, data.get()));
  const Envelope got = round_trip(in, limits);
  REQUIRE(got.tensors[0].nbytes == n);
  CHECK(std::memcmp(got.tensors[0].data, data.get(), n) == 0);
}

TEST_CASE("a frame just under the size cap decodes, in one chunk or many (the traversal limit reads it once)") {
  // Issue 21: with --max-frame-bytes 40000 the 32,032-byte fit frame of mlp:784-10 was refused
  // ("Exceeded message traversal limit"): decode read each chunk twice, and Cap'n Proto charges
  // the traversal limit on every read, so frames above about half the cap failed.
  for (uint64_t chunk : {uint64_t{1} << 20, uint64_t{1024}}) {
    Limits limits;
    limits.max_frame_bytes = 40000;
    limits.chunk_bytes = chunk;
    const uint64_t n = 7850 * 4;  // mlp:784-10's weights and bias: 31,400 bytes
    auto data = pattern(n, 9);
    Envelope in;
    in.kind = "fedavg.fit";
    in.tensors.push_back(tensor("w", DType::kFloat32, {7850}, data.get()));
    CAPTURE(chunk);
    const Envelope got = round_trip(in, limits);
    REQUIRE(got.tensors.size() == 1);
    CHECK(std::memcmp(got.tensors[0].data, data.get(), n) == 0);
    // And at the boundary: the largest tensor the cap allows still decodes.
    const OutFrame probe = encode(in, limits);
    const uint64_t room = limits.max_frame_bytes - probe.size_bytes();
    const uint64_t bigger = (n + room - room / 16) / 4 * 4;  // what is left, less room for chunk pointers
    auto more = pattern(bigger, 10);
    Envelope edge;
    edge.kind = "fedavg.fit";
    edge.tensors.push_back(tensor("w", DType::kFloat32, {static_cast<int64_t>(bigger / 4)}, more.get()));
    const OutFrame out = encode(edge, limits);
    CHECK(out.size_bytes() <= limits.max_frame_bytes);
    CHECK(out.size_bytes() > limits.max_frame_bytes * 3 / 4);
    const std::vector<std::byte> bytes = out.to_bytes();
    CHECK_NOTHROW(decode(InFrame::from_bytes(bytes.data(), bytes.size(), limits), limits));
  }
}

TEST_CASE("a tensor over Cap'n Proto's 512 MiB blob limit round-trips with the default limits") {
  const uint64_t n = uint64_t{600} << 20;
  auto data = allocate_aligned(n);
  for (uint64_t i = 0; i < n; i += 4096) data.get()[i] = static_cast<std::byte>(i / 4096);
  data.get()[n - 1] = std::byte{0x5a};
  Envelope in;
  in.kind = "huge";
  in.tensors.push_back(tensor("w", DType::kUInt8, {static_cast<int64_t>(n)}, data.get()));
  const Envelope got = round_trip(in);
  REQUIRE(got.tensors[0].nbytes == n);
  CHECK(std::memcmp(got.tensors[0].data, data.get(), n) == 0);
}

TEST_CASE("encode refuses a tensor whose byte count does not match dtype x shape") {
  auto data = pattern(64, 5);
  Envelope in;
  in.kind = "bad";
  TensorData t = tensor("w", DType::kFloat32, {2, 2}, data.get());
  t.nbytes = 12;
  in.tensors.push_back(t);
  CHECK_THROWS_WITH_AS(encode(in, Limits{}), doctest::Contains("has 12 bytes but float32[2,2] needs 16"),
                       fedra::Error);
}

TEST_CASE("encode refuses repeated tensor names and messages over the frame limit") {
  auto data = pattern(8192, 6);
  Envelope in;
  in.kind = "dup";
  in.tensors.push_back(tensor("w", DType::kUInt8, {8}, data.get()));
  in.tensors.push_back(tensor("w", DType::kUInt8, {8}, data.get()));
  CHECK_THROWS_WITH_AS(encode(in, Limits{}), doctest::Contains("appears twice"), fedra::Error);
  Limits small;
  small.max_frame_bytes = 4096;
  Envelope big;
  big.kind = "big";
  big.tensors.push_back(tensor("w", DType::kUInt8, {8192}, data.get()));
  CHECK_THROWS_WITH_AS(encode(big, small), doctest::Contains("over the frame limit"), fedra::Error);
}

TEST_CASE("decode refuses a tensor whose byte count does not match, keeping the request id") {
  const auto bytes = raw_frame(0, {2, 2}, 12);
  const InFrame frame = InFrame::from_bytes(bytes.data(), bytes.size(), Limits{});
  Envelope partial;
  CHECK_THROWS_WITH_AS(decode_into(frame, Limits{}, partial),
                       doctest::Contains("tensor 'w' in message 'fedavg.fit_result' has 12 bytes but float32[2,2] needs 16"),
                       fedra::Error);
  CHECK(partial.request_id == 7);
}

TEST_CASE("a tensor in several chunks, some of them empty, is joined (found by tests/fuzz)") {
  capnp::MallocMessageBuilder b;
  auto root = b.initRoot<wire::Envelope>();
  root.setVersion(kProtocolVersion);
  root.setKind("fedavg.fit_result");
  auto t = root.initTensors(1)[0];
  t.setName("w");
  t.setDtype(wire::DType::FLOAT32);
  t.initShape(1).set(0, 2);
  auto chunks = t.initChunks(3);  // 0 bytes, 8 bytes, 0 bytes
  auto middle = chunks.init(1, 8);
  const float values[2] = {1.5f, -2.0f};
  std::memcpy(middle.begin(), values, 8);
  const auto flat = capnp::messageToFlatArray(b);
  const auto bytes = flat.asBytes();
  const Envelope out = decode(
      InFrame::from_bytes(reinterpret_cast<const std::byte*>(bytes.begin()), bytes.size(), Limits{}), Limits{});
  REQUIRE(out.tensors.size() == 1);
  REQUIRE(out.tensors[0].nbytes == 8);
  float got[2];
  std::memcpy(got, out.tensors[0].data, 8);
  CHECK(got[0] == 1.5f);
  CHECK(got[1] == -2.0f);
}

TEST_CASE("decode refuses an unknown dtype code") {
  const auto bytes = raw_frame(42, {2}, 8);
  const InFrame frame = InFrame::from_bytes(bytes.data(), bytes.size(), Limits{});
  CHECK_THROWS_WITH_AS(decode(frame, Limits{}), doctest::Contains("dtype code 42"), fedra::Error);
}

TEST_CASE("a frame over the size cap is refused from its header, before any allocation") {
  Limits limits;
  limits.max_frame_bytes = 1024;
  // One segment of 4096 words announced.
  uint32_t table[2] = {0, 4096};
  CHECK_THROWS_WITH_AS(parse_frame_header(reinterpret_cast<const std::byte*>(table), 8, limits),
                       doctest::Contains("exceeds the frame limit of 1024 bytes"), fedra::Error);
}

TEST_CASE("truncated frames and trailing bytes are refused") {
  Envelope in;
  in.kind = "hello";
  const auto bytes = encode(in, Limits{}).to_bytes();
  for (size_t cut : {size_t{0}, size_t{4}, size_t{8}, bytes.size() / 2, bytes.size() - 1}) {
    CAPTURE(cut);
    CHECK_THROWS_AS(InFrame::from_bytes(bytes.data(), cut, Limits{}), fedra::Error);
  }
  auto longer = bytes;
  longer.resize(bytes.size() + 8);
  CHECK_THROWS_WITH_AS(InFrame::from_bytes(longer.data(), longer.size(), Limits{}),
                       doctest::Contains("trailing bytes"), fedra::Error);
}

TEST_CASE("random and mutated bytes never crash the decoder: every failure is a fedra::Error") {
  std::mt19937 rng(123);
  Limits limits;
  limits.max_frame_bytes = 1 << 20;
  int refused = 0;
  for (int i = 0; i < 2000; ++i) {
    std::vector<std::byte> buf(8 + rng() % 512);
    for (auto& b : buf) b = static_cast<std::byte>(rng());
    try {
      decode(InFrame::from_bytes(buf.data(), buf.size(), limits), limits);
    } catch (const fedra::Error&) {
      ++refused;
    }
  }
  CHECK(refused > 1900);  // almost all random buffers are not frames at all

  auto data = pattern(256, 9);
  Envelope in;
  in.kind = "fedavg.fit";
  in.metrics = {{"num_examples", 10}};
  in.options = {{"lr", "0.1"}};
  in.tensors.push_back(tensor("w", DType::kFloat32, {8, 8}, data.get()));
  const auto good = encode(in, limits).to_bytes();
  int decoded = 0;
  for (int i = 0; i < 5000; ++i) {
    auto buf = good;
    for (int flips = 1 + static_cast<int>(rng() % 4); flips > 0; --flips) {
      buf[rng() % buf.size()] = static_cast<std::byte>(rng());
    }
    try {
      decode(InFrame::from_bytes(buf.data(), buf.size(), limits), limits);
      ++decoded;
    } catch (const fedra::Error&) {
    }
  }
  MESSAGE("mutated frames: " << decoded << " of 5000 still decoded, the rest were refused");
}

TEST_CASE("a small frame whose parts overlap is refused before it can expand (found by tests/fuzz)") {
  // 176 bytes from the fuzzer: a list of empty option structs costs nothing on the wire, so the
  // frame decoded into a message that takes over 1 MiB to encode again.
  const uint8_t raw[] = {
      0, 0, 0, 0, 21, 0, 0, 0, 0, 0, 0, 0, 4, 0, 6, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
      0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 21, 0, 0, 0, 50, 0, 0, 0, 21, 0, 0, 0, 10, 0, 0,
      0, 21, 0, 0, 0, 7, 0, 0, 0, 21, 0, 0, 0, 7, 0, 0, 0, 21, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0,
      0, 0, 0, 114, 114, 111, 114, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 3, 0, 0, 0, 0,
      0, 1, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
      0, 0, 0, 0, 0, 0, 0, 21, 0, 0, 0, 50, 0, 0, 0, 1, 101, 100, 0, 0, 0};
  static_assert(sizeof(raw) == 176);
  for (uint64_t max_frame : {uint64_t{1} << 20, Limits{}.max_frame_bytes}) {
    Limits limits;
    limits.max_frame_bytes = max_frame;
    const InFrame frame = InFrame::from_bytes(reinterpret_cast<const std::byte*>(raw), sizeof(raw), limits);
    CHECK_THROWS_WITH_AS(decode(frame, limits), doctest::Contains("more than the frame holds"), fedra::Error);
  }
}

TEST_CASE("capnp decode reads a dumped frame with the project schema, as docs/protocol.md says") {
  fedra::test::TempDir dir;
  auto data = pattern(16, 10);
  Envelope in;
  in.kind = "fedavg.fit";
  in.round = 3;
  in.sender = "coordinator";
  in.options = {{"lr", "0.05"}};
  in.tensors.push_back(tensor("fc1.bias", DType::kFloat32, {4}, data.get()));
  const auto bytes = encode(in, Limits{}).to_bytes();
  const std::string path = dir / "frame.bin";
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()),
                                               static_cast<std::streamsize>(bytes.size()));
  const std::string cmd = std::string("capnp decode ") + FEDRA_SOURCE_DIR +
                          "/transport/schema/fedra.capnp Envelope < " + path + " 2>&1";
  FILE* p = ::popen(cmd.c_str(), "r");
  REQUIRE(p != nullptr);
  std::string text;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) text.append(buf, n);
  CHECK(::pclose(p) == 0);
  CHECK(fedra::test::contains(text, "kind = \"fedavg.fit\""));
  CHECK(fedra::test::contains(text, "round = 3"));
  CHECK(fedra::test::contains(text, "name = \"fc1.bias\""));
  CHECK(fedra::test::contains(text, "dtype = float32"));
}

TEST_CASE("format_bytes reads well") {
  CHECK(format_bytes(3) == "3 B");
  CHECK(format_bytes(4300) == "4.2 KiB");
  CHECK(format_bytes(uint64_t{3} << 30) == "3.0 GiB");
}
