// Benchmark (a): tensor encode + decode throughput against memcpy, measured in the same run.
//
//   build/benchmarks/codec_bench [--mb 100] [--repeats 15]
//
// A float32 tensor of --mb megabytes goes through the real path of a message, minus the socket:
//   encode   Message -> Envelope -> OutFrame (tensor memory referenced, not copied)
//   wire     the frame's pieces copied into a freshly allocated 64-byte aligned receive buffer,
//            exactly what the kernel does to a received frame (the one copy Fedra makes)
//   decode   InFrame -> Envelope -> Message with a torch::Tensor wrapping the buffer
// and the sum is compared with memcpy of the same bytes into a fresh buffer and into a warm one.
// Each figure is the median of --repeats runs.
#include <algorithm>
#include <chrono>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "core/kit/message.h"
#include "core/system/process.h"

using Clock = std::chrono::steady_clock;

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double ms(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

}  // namespace

int main(int argc, char** argv) {
  int64_t mb = 100;
  int repeats = 15;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--mb") mb = std::stoll(argv[i + 1]);
    else if (a == "--repeats") repeats = std::stoi(argv[i + 1]);
    else {
      std::cerr << "usage: codec_bench [--mb N] [--repeats N]\n";
      return 2;
    }
  }
  fedra::tune_allocator();  // as every fedra process does
  at::set_num_threads(1);
  const int64_t numel = mb * 1000 * 1000 / 4;
  const at::Tensor tensor = torch::randn({numel});
  const uint64_t bytes = tensor.nbytes();
  const fedra::transport::Limits limits;

  std::vector<double> t_memcpy_fresh, t_memcpy_warm, t_encode, t_wire, t_decode, t_total;
  auto warm = fedra::transport::allocate_aligned(bytes);
  std::memset(warm.get(), 0, bytes);
  for (int r = 0; r < repeats; ++r) {
    auto c0 = Clock::now();
    auto fresh = fedra::transport::allocate_aligned(bytes);
    std::memcpy(fresh.get(), tensor.data_ptr(), bytes);
    auto c1 = Clock::now();
    std::memcpy(warm.get(), tensor.data_ptr(), bytes);
    auto c2 = Clock::now();
    fresh.reset();
    t_memcpy_fresh.push_back(ms(c0, c1));
    t_memcpy_warm.push_back(ms(c1, c2));

    auto e0 = Clock::now();
    fedra::Message m("bench.tensor");
    m.tensors.emplace_back("w", tensor);
    fedra::transport::OutFrame frame = fedra::transport::encode(fedra::to_envelope(m), limits);
    auto e1 = Clock::now();
    // The receive side: parse the table, allocate, copy the body in (the socket's copy).
    const auto& pieces = frame.pieces();
    auto header = fedra::transport::parse_frame_header(pieces[0].data, pieces[0].size, limits);
    auto body = fedra::transport::allocate_aligned(header.body_bytes);
    uint64_t at = 0;
    for (size_t i = 1; i < pieces.size(); ++i) {
      std::memcpy(body.get() + at, pieces[i].data, pieces[i].size);
      at += pieces[i].size;
    }
    auto e2 = Clock::now();
    fedra::Message got = fedra::from_envelope(
        fedra::transport::decode(fedra::transport::InFrame(std::move(header), std::move(body)), limits));
    auto e3 = Clock::now();
    if (got.tensor("w").numel() != numel || got.tensor("w")[numel - 1].item<float>() != tensor[numel - 1].item<float>()) {
      std::cerr << "decoded tensor differs from the original\n";
      return 1;
    }
    t_encode.push_back(ms(e0, e1));
    t_wire.push_back(ms(e1, e2));
    t_decode.push_back(ms(e2, e3));
    t_total.push_back(ms(e0, e3));
  }
  const double gb = static_cast<double>(bytes) / 1e9;
  const double memcpy_fresh = median(t_memcpy_fresh), memcpy_warm = median(t_memcpy_warm);
  const double total = median(t_total);
  std::cout << fmt::format("codec benchmark: one float32 tensor of {} MB, median of {} runs\n", mb, repeats)
            << fmt::format("  {:<52} {:>9.3f} ms {:>7.2f} GB/s\n", "memcpy into a fresh buffer", memcpy_fresh, gb / memcpy_fresh * 1e3)
            << fmt::format("  {:<52} {:>9.3f} ms {:>7.2f} GB/s\n", "memcpy into a warm buffer", memcpy_warm, gb / memcpy_warm * 1e3)
            << fmt::format("  {:<52} {:>9.3f} ms\n", "encode (Message -> frame, tensor referenced)", median(t_encode))
            << fmt::format("  {:<52} {:>9.3f} ms\n", "wire copy into a fresh receive buffer", median(t_wire))
            << fmt::format("  {:<52} {:>9.3f} ms\n", "decode (frame -> torch::Tensor, no copy)", median(t_decode))
            << fmt::format("  {:<52} {:>9.3f} ms {:>7.2f} GB/s\n", "encode + wire copy + decode", total, gb / total * 1e3)
            << fmt::format("ratio to memcpy (fresh buffer): {:.2f}x   ratio to memcpy (warm buffer): {:.2f}x   "
                           "target >= 0.5x: {}\n",
                           memcpy_fresh / total, memcpy_warm / total,
                           memcpy_warm / total >= 0.5 ? "met" : "NOT met");
  return 0;
}
