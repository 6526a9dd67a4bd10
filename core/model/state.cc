#include "core/model/state.h"

#include <algorithm>
#include <fstream>
#include <map>

#include <torch/torch.h>

#include "core/system/files.h"

namespace fedra {

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
