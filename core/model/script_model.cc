#include "core/model/script_model.h"

#include <filesystem>
#include <map>
#include <memory>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>

#include <torch/torch.h>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "core/data/tensor_checks.h"
#include "core/kit/error.h"
#include "core/model/state.h"

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

ScriptedImpl::ScriptedImpl(torch::jit::Module module, std::string what, std::optional<torch::jit::Module> root)
    : module_(std::move(module)), what_(std::move(what)), root_(std::move(root)) {
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

std::vector<std::string> batchnorm_tensor_names(const torch::nn::Module& model) {
  std::vector<std::string> names;
  auto add = [&](const std::string& prefix, const std::string& leaf) { names.push_back(prefix.empty() ? leaf : prefix + "." + leaf); };
  for (const auto& item : model.named_modules()) {
    const std::string& at = item.key();
    const auto& m = item.value();
    if (m->name().find("BatchNorm") != std::string::npos) {
      for (const auto& p : m->named_parameters(/*recurse=*/false)) add(at, p.key());
      for (const auto& b : m->named_buffers(/*recurse=*/false)) add(at, b.key());
    } else if (const auto* scripted = m->as<ScriptedImpl>()) {
      for (const auto& sub : scripted->script().named_modules()) {
        const auto type = sub.value.type()->name();
        if (!type || type->name().find("BatchNorm") == std::string::npos) continue;
        const std::string prefix = sub.name.empty() ? at : (at.empty() ? sub.name : at + "." + sub.name);
        for (const auto& p : sub.value.named_parameters(/*recurse=*/false)) add(prefix, p.name);
        for (const auto& b : sub.value.named_buffers(/*recurse=*/false)) add(prefix, b.name);
      }
    }
  }
  return names;
}

ScriptSpec parse_script_spec(const std::string& spec) {
  FEDRA_REQUIRE(is_torchscript(spec), "'{}' is not a TorchScript model spec", spec);
  const std::string body = spec.substr(std::string(kTorchScriptPrefix).size());
  const std::string forms = "torchscript:PATH[,cut=NAME[,head=NAME]] or torchscript:bottom=PATH,top=PATH[,head=PATH]";
  ScriptSpec s;
  std::string head;
  size_t at = 0;
  for (int i = 0; at <= body.size(); ++i) {
    const size_t comma = body.find(',', at);
    const std::string item = body.substr(at, comma == std::string::npos ? std::string::npos : comma - at);
    auto value = [&](const char* key) {
      const std::string v = item.substr(std::strlen(key));
      FEDRA_REQUIRE(!v.empty(), "model '{}': {} needs a value ({})", spec, key, forms);
      return v;
    };
    if (item.rfind("cut=", 0) == 0) {
      s.cut = value("cut=");
    } else if (item.rfind("head=", 0) == 0) {
      head = value("head=");
    } else if (item.rfind("bottom=", 0) == 0) {
      s.bottom = value("bottom=");
    } else if (item.rfind("top=", 0) == 0) {
      s.top = value("top=");
    } else {
      FEDRA_REQUIRE(i == 0, "model '{}': unknown item '{}'; a TorchScript model is {}", spec, item, forms);
      s.path = item;
    }
    if (comma == std::string::npos) break;
    at = comma + 1;
  }
  if (!s.bottom.empty() || !s.top.empty()) {
    FEDRA_REQUIRE(!s.bottom.empty() && !s.top.empty() && s.path.empty() && s.cut.empty(),
                  "model '{}': a network given as part files needs bottom= and top= (and head= for the "
                  "U-shaped variant), nothing else: {}", spec, forms);
    s.head_file = head;
  } else {
    FEDRA_REQUIRE(!s.path.empty(), "--model torchscript:PATH needs the file, e.g. torchscript:net.pt");
    s.head = head;
  }
  return s;
}

ScriptChain script_chain(const std::string& spec) {
  const ScriptSpec s = parse_script_spec(spec);
  ScriptChain chain;
  chain.full = torch::nn::Sequential();
  if (s.parts()) {
    for (const auto& [name, path] : {std::pair<std::string, std::string>{"bottom", s.bottom}, {"top", s.top},
                                     {"head", s.head_file}}) {
      if (path.empty()) continue;
      chain.full->push_back(std::string(name), Scripted(load_script(path), fmt::format("the {} part '{}'", name, path)));
    }
    chain.cut = "bottom";
    if (!s.head_file.empty()) chain.head = "head";
  } else {
    torch::jit::Module root = load_script(s.path);
    std::vector<std::string> own;
    for (const auto& p : root.named_parameters(/*recurse=*/false)) own.push_back(p.name);
    for (const auto& b : root.named_buffers(/*recurse=*/false)) own.push_back(b.name);
    FEDRA_REQUIRE(own.empty(), "TorchScript model '{}' holds {} itself, outside its children, so it cannot be cut by "
                  "child name; give the parts as separate scripts, torchscript:bottom=PATH,top=PATH (docs/models.md)",
                  s.path, fmt::join(own, ", "));
    for (const auto& child : root.named_children()) {
      chain.full->push_back(std::string(child.name), Scripted(child.value, fmt::format("child '{}' of TorchScript model '{}'",
                                                                          child.name, s.path), root));
    }
    FEDRA_REQUIRE(chain.full->size() >= 2, "TorchScript model '{}' has {} top-level child module(s), too few to cut; "
                  "give the parts as separate scripts, torchscript:bottom=PATH,top=PATH (docs/models.md)",
                  s.path, chain.full->size());
    chain.cut = s.cut;
    chain.head = s.head;
  }
  chain.full->train();
  return chain;
}

namespace {

// Throws unless the children of a chain cut from one script (not part files), run in order on
// `x`, give what the whole script's forward gives. The script is the children's root: no reload.
void check_chain(ScriptChain& chain, const std::string& path, const at::Tensor& x) {
  torch::NoGradGuard no_grad;
  chain.full->eval();
  torch::jit::Module whole = *chain.full->ptr(0)->as<ScriptedImpl>()->root();
  whole.eval();
  const at::Tensor want = whole.forward({x}).toTensor();
  std::vector<std::string> names;
  for (const auto& c : chain.full->named_children()) names.push_back(c.key());
  const std::string advice = fmt::format(
      "the forward of TorchScript model '{}' is not its top-level children run in order ({}), so cutting it by "
      "child name would change the network; give the parts as separate scripts, "
      "torchscript:bottom=PATH,top=PATH (docs/models.md)", path, fmt::join(names, ", "));
  at::Tensor got;
  try {
    got = chain.full->forward(x);
  } catch (const std::exception& e) {
    FEDRA_FAIL("{} ({})", advice, torch_error_reason(e));
  }
  FEDRA_REQUIRE(got.sizes() == want.sizes() && torch::allclose(got, want, 1e-4, 1e-5), "{}", advice);
  chain.full->train();
}

}  // namespace

torch::nn::Sequential script_layers(const std::string& spec, const Dataset* data) {
  ScriptChain chain = script_chain(spec);
  const ScriptSpec s = parse_script_spec(spec);
  if (!s.parts() && data != nullptr && data->size() > 0) check_chain(chain, s.path, data->inputs.narrow(0, 0, 1));
  return chain.full;
}

void check_children_in_order(const std::string& spec, const at::Tensor& x, bool always) {
  const ScriptSpec s = parse_script_spec(spec);
  if (s.parts() || (s.cut.empty() && !always)) return;
  ScriptChain chain = script_chain(spec);
  check_chain(chain, s.path, x);
}

}  // namespace fedra
