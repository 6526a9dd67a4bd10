// Micro-benchmarks (Google Benchmark) of the codec, the framing and the aggregation, each
// printed beside memcpy of the same bytes measured in the same run.
//
//   build/benchmarks/micro_bench [--benchmark_filter=REGEX] [--benchmark_repetitions=N] ...
//
// Sizes are the payload bytes of one float32 tensor: 64 KiB (a cut activation), 4 MiB (a small
// model) and 64 MiB (a large one). What each measures:
//   memcpy/warm           copy into a buffer reused every iteration
//   memcpy/fresh          allocate a 64-byte aligned buffer and copy into it (what a receive does)
//   codec/encode          Message -> Envelope -> OutFrame; tensor bytes referenced, not copied
//   codec/decode          a received frame -> Envelope -> Message; the tensor wraps the buffer
//   framing/receive       the receive side of a frame: parse the segment table, allocate the
//                         aligned body buffer, copy the pieces in (the socket's one copy)
//   codec+framing         encode, receive, decode: a message's whole path minus the socket
//   aggregation/fedavg4   WeightedAverage: four updates folded in (checked finite, float64 sum)
//                         and the average taken; bytes = the four updates read
// At the end a table gives each benchmark's throughput and its ratio to memcpy (warm and fresh)
// of the same size. Ratios far above 1 mean the step does not touch the payload at all.
#include <unistd.h>

#include <cstring>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>
#include <fmt/format.h>
#include <torch/torch.h>

#include "core/federated/aggregation.h"
#include "core/kit/message.h"
#include "core/system/process.h"

namespace {

using fedra::transport::allocate_aligned;

const fedra::transport::Limits kLimits;

at::Tensor payload(int64_t bytes) { return torch::rand({bytes / 4}); }

void set_bytes(benchmark::State& state, int64_t per_iteration) {
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * per_iteration);
}

// The receive side of a frame: what transport/tcp does with the bytes a socket delivers.
fedra::transport::InFrame receive(const fedra::transport::OutFrame& frame) {
  const auto& pieces = frame.pieces();
  auto header = fedra::transport::parse_frame_header(pieces[0].data, pieces[0].size, kLimits);
  auto body = allocate_aligned(header.body_bytes);
  uint64_t at = 0;
  for (size_t i = 1; i < pieces.size(); ++i) {
    std::memcpy(body.get() + at, pieces[i].data, pieces[i].size);
    at += pieces[i].size;
  }
  return fedra::transport::InFrame(std::move(header), std::move(body));
}

fedra::Message message_of(const at::Tensor& t) {
  fedra::Message m("bench.tensor");
  m.tensors.emplace_back("w", t);
  return m;
}

// Runs `body` once per iteration and reports state.range(0) bytes processed per iteration.
template <class Body>
void per_iteration(benchmark::State& state, Body&& body) {
  for (auto _ : state) body();
  set_bytes(state, state.range(0));
}

// Copies `src` into `dst` where the compiler cannot drop the copy.
void copy_into(std::byte* dst, const at::Tensor& src) {
  std::memcpy(dst, src.data_ptr(), src.nbytes());
  benchmark::DoNotOptimize(dst);
  benchmark::ClobberMemory();
}

void BM_memcpy_warm(benchmark::State& state) {
  const at::Tensor src = payload(state.range(0));
  auto dst = allocate_aligned(src.nbytes());
  std::memset(dst.get(), 0, src.nbytes());
  per_iteration(state, [&] { copy_into(dst.get(), src); });
}

void BM_memcpy_fresh(benchmark::State& state) {
  const at::Tensor src = payload(state.range(0));
  per_iteration(state, [&] { copy_into(allocate_aligned(src.nbytes()).get(), src); });
}

void BM_codec_encode(benchmark::State& state) {
  const at::Tensor t = payload(state.range(0));
  per_iteration(state, [&] {
    fedra::transport::OutFrame frame = fedra::transport::encode(fedra::to_envelope(message_of(t)), kLimits);
    benchmark::DoNotOptimize(frame.size_bytes());
  });
}

void BM_codec_decode(benchmark::State& state) {
  const at::Tensor t = payload(state.range(0));
  const fedra::transport::InFrame in =
      receive(fedra::transport::encode(fedra::to_envelope(message_of(t)), kLimits));
  per_iteration(state, [&] {
    fedra::Message m = fedra::from_envelope(fedra::transport::decode(in, kLimits));
    benchmark::DoNotOptimize(m.tensor("w").data_ptr());
  });
}

void BM_framing_receive(benchmark::State& state) {
  const at::Tensor t = payload(state.range(0));
  const fedra::transport::OutFrame frame = fedra::transport::encode(fedra::to_envelope(message_of(t)), kLimits);
  per_iteration(state, [&] {
    fedra::transport::InFrame in = receive(frame);
    benchmark::DoNotOptimize(in.body());
    benchmark::ClobberMemory();
  });
}

void BM_codec_framing(benchmark::State& state) {
  const at::Tensor t = payload(state.range(0));
  per_iteration(state, [&] {
    fedra::transport::OutFrame frame = fedra::transport::encode(fedra::to_envelope(message_of(t)), kLimits);
    fedra::Message m = fedra::from_envelope(fedra::transport::decode(receive(frame), kLimits));
    benchmark::DoNotOptimize(m.tensor("w").data_ptr());
  });
}

void BM_aggregation_fedavg4(benchmark::State& state) {
  const int64_t bytes = state.range(0);
  std::vector<fedra::NamedTensors> updates;
  for (int i = 0; i < 4; ++i) updates.push_back({{"w", payload(bytes)}});
  fedra::WeightedAverage avg;
  for (auto _ : state) {
    for (size_t i = 0; i < updates.size(); ++i) avg.add(updates[i], static_cast<double>(100 + i));
    fedra::NamedTensors out = avg.take_average();
    benchmark::DoNotOptimize(out[0].second.data_ptr());
    avg.recycle(std::move(out));
  }
  set_bytes(state, 4 * bytes);
}

void sizes(benchmark::internal::Benchmark* b) {
  for (int64_t s : {int64_t{64} << 10, int64_t{4} << 20, int64_t{64} << 20}) b->Arg(s);
  b->Unit(benchmark::kMicrosecond);
}

BENCHMARK(BM_memcpy_warm)->Apply(sizes);
BENCHMARK(BM_memcpy_fresh)->Apply(sizes);
BENCHMARK(BM_codec_encode)->Apply(sizes);
BENCHMARK(BM_codec_decode)->Apply(sizes);
BENCHMARK(BM_framing_receive)->Apply(sizes);
BENCHMARK(BM_codec_framing)->Apply(sizes);
BENCHMARK(BM_aggregation_fedavg4)->Apply(sizes);

// The console output as usual, and each run's bytes/s kept for the ratio table.
class RatioReporter : public benchmark::ConsoleReporter {
 public:
  explicit RatioReporter(OutputOptions options) : ConsoleReporter(options) {}

  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& r : runs) {
      if (r.error_occurred) continue;
      // With --benchmark_repetitions the median stands for the run; otherwise the one run.
      const bool use = (r.run_type == Run::RT_Iteration && r.aggregate_name.empty()) || r.aggregate_name == "median";
      const auto it = r.counters.find("bytes_per_second");
      if (!use || it == r.counters.end()) continue;
      rates_[r.run_name.function_name][std::stoll(r.run_name.args)] = it->second.value;
    }
  }

  void print_ratios(std::ostream& os) const {
    const auto warm = rates_.find("BM_memcpy_warm");
    const auto fresh = rates_.find("BM_memcpy_fresh");
    os << "\nthroughput against memcpy of the same bytes, measured in this run (GB/s; ratio = benchmark / memcpy)\n"
       << fmt::format("{:<26} {:>10} {:>10} {:>12} {:>10} {:>12} {:>10}\n", "benchmark", "bytes", "GB/s",
                      "memcpy warm", "ratio", "memcpy fresh", "ratio");
    for (const auto& [name, by_size] : rates_) {
      for (const auto& [size, rate] : by_size) {
        auto baseline = [&](const auto& found) -> double {
          if (found == rates_.end()) return 0;
          const auto s = found->second.find(size);
          return s == found->second.end() ? 0 : s->second;
        };
        const double w = baseline(warm), f = baseline(fresh);
        auto ratio = [&](double base) { return base > 0 ? fmt::format("{:.2f}x", rate / base) : std::string("-"); };
        os << fmt::format("{:<26} {:>10} {:>10.2f} {:>12.2f} {:>10} {:>12.2f} {:>10}\n", name.substr(3), size,
                          rate / 1e9, w / 1e9, ratio(w), f / 1e9, ratio(f));
      }
    }
  }

 private:
  std::map<std::string, std::map<int64_t, double>> rates_;  // function -> payload bytes -> bytes/s
};

}  // namespace

int main(int argc, char** argv) {
  fedra::tune_allocator();  // as every fedra process does
  at::set_num_threads(1);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 2;
  // Colour only on a terminal: the table is often piped into a file or a test.
  RatioReporter reporter(isatty(STDOUT_FILENO) ? benchmark::ConsoleReporter::OO_ColorTabular
                                               : benchmark::ConsoleReporter::OO_Tabular);
  benchmark::RunSpecifiedBenchmarks(&reporter);
  reporter.print_ratios(std::cout);
  benchmark::Shutdown();
  return 0;
}
