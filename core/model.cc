#include "core/model.h"

#include <fstream>

#include <torch/torch.h>

#include "core/metrics.h"
#include "core/options.h"

namespace fedra {

namespace nn = torch::nn;

namespace {

nn::Sequential mlp(const std::string& dims_text, const std::string& spec) {
  std::vector<int64_t> dims;
  size_t at = 0;
  while (at <= dims_text.size()) {
    const size_t dash = dims_text.find('-', at);
    const std::string item = dims_text.substr(at, dash == std::string::npos ? std::string::npos : dash - at);
    char* end = nullptr;
    const long long v = std::strtoll(item.c_str(), &end, 10);
    FEDRA_REQUIRE(!item.empty() && end == item.c_str() + item.size() && v > 0,
                  "model '{}': '{}' is not a positive layer width (expected e.g. "
                  "mlp:784-200-200-10)",
                  spec, item);
    dims.push_back(v);
    if (dash == std::string::npos) break;
    at = dash + 1;
  }
  FEDRA_REQUIRE(dims.size() >= 2, "model '{}' needs at least an input and an output width", spec);
  nn::Sequential seq;
  seq->push_back("flatten", nn::Flatten());
  for (size_t i = 0; i + 1 < dims.size(); ++i) {
    seq->push_back(fmt::format("fc{}", i + 1), nn::Linear(dims[i], dims[i + 1]));
    if (i + 2 < dims.size()) seq->push_back(fmt::format("relu{}", i + 1), nn::ReLU());
  }
  return seq;
}

nn::Sequential mcmahan_cnn(int64_t classes) {
  nn::Sequential seq;
  seq->push_back("conv1", nn::Conv2d(nn::Conv2dOptions(1, 32, 5).padding(2)));
  seq->push_back("relu1", nn::ReLU());
  seq->push_back("pool1", nn::MaxPool2d(2));
  seq->push_back("conv2", nn::Conv2d(nn::Conv2dOptions(32, 64, 5).padding(2)));
  seq->push_back("relu2", nn::ReLU());
  seq->push_back("pool2", nn::MaxPool2d(2));
  seq->push_back("flatten", nn::Flatten());
  seq->push_back("fc1", nn::Linear(7 * 7 * 64, 512));
  seq->push_back("relu3", nn::ReLU());
  seq->push_back("fc2", nn::Linear(512, classes));
  return seq;
}

nn::Sequential lenet5(int64_t classes) {
  nn::Sequential seq;
  seq->push_back("conv1", nn::Conv2d(nn::Conv2dOptions(1, 6, 5).padding(2)));
  seq->push_back("relu1", nn::ReLU());
  seq->push_back("pool1", nn::MaxPool2d(2));
  seq->push_back("conv2", nn::Conv2d(nn::Conv2dOptions(6, 16, 5)));
  seq->push_back("relu2", nn::ReLU());
  seq->push_back("pool2", nn::MaxPool2d(2));
  seq->push_back("flatten", nn::Flatten());
  seq->push_back("fc1", nn::Linear(16 * 5 * 5, 120));
  seq->push_back("relu3", nn::ReLU());
  seq->push_back("fc2", nn::Linear(120, 84));
  seq->push_back("relu4", nn::ReLU());
  seq->push_back("fc3", nn::Linear(84, classes));
  return seq;
}

}  // namespace

torch::nn::Sequential build_model(const std::string& spec_text, uint64_t seed) {
  torch::manual_seed(seed);
  return build_model_unseeded(spec_text);
}

torch::nn::Sequential build_model_unseeded(const std::string& spec_text) {
  const auto colon = spec_text.find(':');
  const std::string name = spec_text.substr(0, colon);
  if (name == "mlp") {
    FEDRA_REQUIRE(colon != std::string::npos, "model 'mlp' needs widths, e.g. mlp:784-200-200-10");
    return mlp(spec_text.substr(colon + 1), spec_text);
  }
  const Spec spec = parse_spec(spec_text, "model");
  spec.args.require_known({"classes"});
  const int64_t classes = spec.args.get_int("classes", 10);
  FEDRA_REQUIRE(classes >= 1, "model '{}': classes must be >= 1", spec_text);
  if (name == "cnn") return mcmahan_cnn(classes);
  if (name == "lenet5") return lenet5(classes);
  FEDRA_FAIL("unknown model '{}'; use mlp:IN-H1-...-OUT, cnn or lenet5", spec_text);
}

int64_t count_parameters(const torch::nn::Module& model) {
  int64_t n = 0;
  for (const auto& p : model.parameters()) n += p.numel();
  return n;
}

NamedTensors model_state(const torch::nn::Module& model) {
  NamedTensors out;
  for (const auto& p : model.named_parameters()) out.emplace_back(p.key(), p.value().detach());
  for (const auto& b : model.named_buffers()) out.emplace_back(b.key(), b.value().detach());
  return out;
}

void load_model_state(torch::nn::Module& model, const NamedTensors& state) {
  torch::NoGradGuard no_grad;
  std::map<std::string, const at::Tensor*> by_name;
  for (const auto& [n, t] : state) by_name[n] = &t;
  size_t used = 0;
  auto load = [&](const std::string& name, at::Tensor& dst) {
    auto it = by_name.find(name);
    FEDRA_REQUIRE(it != by_name.end(), "model state has no tensor '{}' (model and message "
                  "disagree: same model spec on both sides?)", name);
    const at::Tensor& src = *it->second;
    FEDRA_REQUIRE(src.sizes() == dst.sizes() && src.scalar_type() == dst.scalar_type(),
                  "tensor '{}' is {} but the model has {}", name, describe_tensor(src),
                  describe_tensor(dst));
    dst.copy_(src);
    ++used;
  };
  for (auto& p : model.named_parameters()) load(p.key(), p.value());
  for (auto& b : model.named_buffers()) load(b.key(), b.value());
  FEDRA_REQUIRE(used == state.size(), "model state has {} tensors the model does not have",
                state.size() - used);
}

void save_model_file(const std::string& path, const NamedTensors& state) {
  Message m("model");
  m.sender = "fedra";
  m.tensors = state;
  transport::Limits limits;
  const std::vector<std::byte> bytes = transport::encode(to_envelope(m), limits).to_bytes();
  write_file_atomically(path, std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
}

NamedTensors load_model_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  FEDRA_REQUIRE(in.good(), "cannot read model file '{}'", path);
  std::vector<char> raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  transport::Limits limits;
  limits.max_frame_bytes = std::max<uint64_t>(limits.max_frame_bytes, raw.size());
  try {
    transport::InFrame frame = transport::InFrame::from_bytes(
        reinterpret_cast<const std::byte*>(raw.data()), raw.size(), limits);
    Message m = from_envelope(transport::decode(frame, limits));
    FEDRA_REQUIRE(m.kind == "model", "holds a '{}' message, not a model", m.kind);
    return std::move(m.tensors);
  } catch (const Error& e) {
    FEDRA_FAIL("model file '{}': {}", path, e.what());
  }
}

}  // namespace fedra
