#include "core/script_model.h"

#include <filesystem>
#include <map>
#include <memory>
#include <sstream>

#include <torch/torch.h>

#include "core/error.h"
#include "core/metrics.h"
#include "core/model.h"
#include "core/tensor_checks.h"

namespace fedra {

bool is_torchscript(const std::string& spec) { return spec.rfind(kTorchScriptPrefix, 0) == 0; }

void refuse_torchscript(const std::string& spec, const std::string& strategy, const std::string& why) {
  FEDRA_REQUIRE(!is_torchscript(spec), "{} cannot train a TorchScript model ('{}'): {}; use fedavg, gradsum or "
                "fedra train for it (docs/models.md)", strategy, spec, why);
}

torch::jit::Module load_script(const std::string& path) {
  FEDRA_REQUIRE(!path.empty(), "--model torchscript:PATH needs the file, e.g. torchscript:net.pt");
  FEDRA_REQUIRE(std::filesystem::is_regular_file(path),
                "TorchScript model '{}' does not exist (write it in Python with torch.jit.script(net).save(PATH))",
                path);
  try {
    torch::jit::Module m = torch::jit::load(path);
    m.eval();  // train() decides; a fresh model is evaluated as loaded
    return m;
  } catch (const std::exception& e) {
    FEDRA_FAIL("cannot load '{}' as a TorchScript model (a file of torch.jit.script or torch.jit.trace, "
               "saved with .save()): {}", path, torch_error_reason(e));
  }
}

ScriptedImpl::ScriptedImpl(torch::jit::Module module, std::string what)
    : module_(std::move(module)), what_(std::move(what)) {
  // Placeholder modules mirror the script's hierarchy, so the names are the script's
  // ("block_a.conv.weight"); the tensors registered are the script's own.
  std::map<std::string, torch::nn::Module*> nodes{{"", this}};
  auto node_of = [&](const std::string& path) {
    torch::nn::Module* at = this;
    std::string prefix;
    size_t start = 0;
    for (size_t dot; (dot = path.find('.', start)) != std::string::npos; start = dot + 1) {
      const std::string part = path.substr(start, dot - start);
      prefix += (prefix.empty() ? "" : ".") + part;
      auto it = nodes.find(prefix);
      if (it == nodes.end()) {
        auto child = at->register_module(part, std::make_shared<torch::nn::Module>());
        it = nodes.emplace(prefix, child.get()).first;
      }
      at = it->second;
    }
    return std::make_pair(at, path.substr(start));
  };
  for (const auto& p : module_.named_parameters(/*recurse=*/true)) {
    auto [node, leaf] = node_of(p.name);
    node->register_parameter(leaf, p.value, /*requires_grad=*/true);
  }
  for (const auto& b : module_.named_buffers(/*recurse=*/true)) {
    auto [node, leaf] = node_of(b.name);
    node->register_buffer(leaf, b.value);
  }
  train(false);
}

at::Tensor ScriptedImpl::forward(const at::Tensor& x) {
  try {
    return module_.forward({x}).toTensor();
  } catch (const std::exception& e) {
    FEDRA_FAIL("{} cannot take an input of {}: {}", what_, describe_tensor(x), torch_error_reason(e));
  }
}

void ScriptedImpl::train(bool on) {
  torch::nn::Module::train(on);
  module_.train(on);
}

torch::nn::Sequential scripted_model(const std::string& path) {
  torch::nn::Sequential seq;
  seq->push_back("net", Scripted(load_script(path), "TorchScript model '" + path + "'"));
  seq->train();
  return seq;
}

void save_trained_model(const std::string& out_dir, const torch::nn::Sequential& model) {
  save_model_file(out_dir + "/model.bin", model_state(*model));
  save_scripted(model, out_dir + "/model.pt");
}

bool save_scripted(const torch::nn::Sequential& model, const std::string& path) {
  if (model->size() != 1) return false;
  const auto scripted = model->ptr(0)->as<ScriptedImpl>();
  if (scripted == nullptr) return false;
  std::ostringstream bytes;
  try {
    torch::jit::Module copy = scripted->script().clone();  // saved in eval mode, as torch.jit.load users expect
    copy.eval();
    copy.save(bytes);
  } catch (const std::exception& e) {
    FEDRA_FAIL("cannot write the TorchScript model '{}': {}", path, torch_error_reason(e));
  }
  write_file_atomically(path, bytes.str());
  return true;
}

}  // namespace fedra
