// Writes valid frames to DIR as the fuzzer's starting corpus: every message shape the runtime
// sends (hello with a histogram, a model of several dtypes, a chunked tensor, metrics and
// options, an error, a partial reply, an empty message).
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "transport/codec.h"

using namespace fedra::transport;

namespace {

void write(const std::string& dir, const std::string& name, const Envelope& env, const Limits& limits) {
  const std::vector<std::byte> bytes = encode(env, limits).to_bytes();
  std::ofstream(dir + "/" + name, std::ios::binary)
      .write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

TensorData tensor(const std::string& name, DType dtype, std::vector<int64_t> shape, const std::vector<std::byte>& buf) {
  TensorData t;
  t.name = name;
  t.dtype = dtype;
  t.shape = std::move(shape);
  t.data = buf.data();
  t.nbytes = t.numel() * dtype_size(dtype);
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: make_seeds DIR\n";
    return 2;
  }
  const std::string dir = argv[1];
  Limits limits;
  limits.max_frame_bytes = 1 << 20;
  limits.chunk_bytes = 1 << 10;
  std::vector<std::byte> buf(8192);
  for (size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<std::byte>(i * 37 + 11);

  Envelope empty;
  empty.kind = "shutdown";
  write(dir, "empty", empty, limits);

  Envelope hello;
  hello.kind = "hello";
  hello.sender = "worker-0";
  hello.options = {{"token", "secret"}};
  hello.metrics = {{"num_examples", 6000}};
  hello.tensors = {tensor("label_histogram", DType::kInt64, {10}, buf)};
  write(dir, "hello", hello, limits);

  Envelope model;
  model.kind = "fedavg.fit";
  model.round = 3;
  model.request_id = 7;
  model.options = {{"lr", "0.05"}, {"local_epochs", "1"}};
  model.tensors = {tensor("fc1.weight", DType::kFloat32, {16, 8}, buf), tensor("fc1.bias", DType::kFloat32, {16}, buf),
                   tensor("counter", DType::kInt64, {}, buf), tensor("half", DType::kFloat16, {3, 5}, buf),
                   tensor("mask", DType::kBool, {7}, buf), tensor("big", DType::kFloat64, {700}, buf)};  // 5,600 B: chunked
  write(dir, "model", model, limits);

  Envelope part;
  part.kind = "gradsum.grad";
  part.step = 41;
  part.partial = true;
  part.metrics = {{"loss", 0.25}, {"examples", 32}};
  part.tensors = {tensor("bucket.0", DType::kFloat32, {3, 1, 5, 5}, buf)};
  write(dir, "partial", part, limits);

  Envelope err;
  err.kind = kErrorKind;
  err.error = WireError{fedra::ErrorKind::kOverloaded, "round deadline passed"};
  write(dir, "error", err, limits);
  std::cout << "wrote 5 seed frames to " << dir << "\n";
  return 0;
}
