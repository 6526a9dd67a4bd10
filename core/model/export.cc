#include "core/model/export.h"

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "core/kit/error.h"
#include "core/model/model.h"
#include "core/model/script_model.h"
#include "core/model/state.h"
#include "core/system/files.h"

namespace fedra {

torch::jit::Module script_of(const torch::nn::Sequential& model) {
  auto cu = std::make_shared<torch::jit::CompilationUnit>();
  torch::jit::Module root(c10::QualifiedName("__torch__.fedra.Model"), cu);
  std::string body = "def forward(self, x):\n";
  auto pair = [](const torch::ExpandingArray<2>& a) { return fmt::format("[{}, {}]", (*a)[0], (*a)[1]); };
  for (const auto& child : model->named_children()) {
    const std::string& name = child.key();
    const auto& m = child.value();
    // Layers with weights become submodules of their name holding copies of them.
    auto hold = [&] {
      torch::jit::Module sub(c10::QualifiedName("__torch__.fedra.Layer_" + name), cu);
      for (const auto& p : m->named_parameters(/*recurse=*/false)) sub.register_parameter(p.key(), p.value().detach().clone(), false);
      root.register_module(name, sub);
    };
    if (m->as<torch::nn::FlattenImpl>()) {
      const auto& o = m->as<torch::nn::FlattenImpl>()->options;
      body += fmt::format("    x = torch.flatten(x, {}, {})\n", o.start_dim(), o.end_dim());
    } else if (auto* l = m->as<torch::nn::LinearImpl>()) {
      hold();
      body += l->options.bias() ? fmt::format("    x = torch.linear(x, self.{0}.weight, self.{0}.bias)\n", name)
                                : fmt::format("    x = torch.linear(x, self.{0}.weight)\n", name);
    } else if (auto* c = m->as<torch::nn::Conv2dImpl>()) {
      const auto& o = c->options;
      const auto* padding = c10::get_if<torch::ExpandingArray<2>>(&o.padding());
      FEDRA_REQUIRE(padding != nullptr && o.groups() == 1 && o.bias(), "layer '{}': this convolution's options have no "
                    "TorchScript rendering here", name);
      hold();
      body += fmt::format("    x = torch.conv2d(x, self.{0}.weight, self.{0}.bias, {1}, {2}, {3})\n", name,
                          pair(o.stride()), pair(*padding), pair(o.dilation()));
    } else if (m->as<torch::nn::ReLUImpl>()) {
      body += "    x = torch.relu(x)\n";
    } else if (m->as<torch::nn::SigmoidImpl>()) {
      body += "    x = torch.sigmoid(x)\n";
    } else if (auto* p = m->as<torch::nn::MaxPool2dImpl>()) {
      body += fmt::format("    x = torch.max_pool2d(x, {}, {})\n", pair(p->options.kernel_size()), pair(p->options.stride()));
    } else if (auto* a = m->as<torch::nn::AvgPool2dImpl>()) {
      body += fmt::format("    x = torch.avg_pool2d(x, {}, {})\n", pair(a->options.kernel_size()), pair(a->options.stride()));
    } else if (auto* s = m->as<SeparableLinearImpl>()) {
      hold();
      const int64_t blocks = s->weight.size(0), out = s->weight.size(1), chunk = s->weight.size(2);
      body += fmt::format("    n = x.size(0)\n    x = (torch.einsum('bnc,nkc->bnk', [x.view([n, {1}, {2}]), self.{0}.weight]) + "
                          "self.{0}.bias).reshape([n, {3}])\n", name, blocks, chunk, blocks * out);
    } else {
      FEDRA_FAIL("layer '{}' ({}) has no TorchScript rendering; the model is in model.bin", name, m->name());
    }
  }
  body += "    return x\n";
  try {
    root.define(body);
  } catch (const std::exception& e) {
    FEDRA_FAIL("cannot compile the model's TorchScript: {}", torch_error_reason(e));
  }
  root.eval();
  return root;
}

namespace {

void save_script(const torch::jit::Module& script, const std::string& path) {
  std::ostringstream bytes;
  try {
    torch::jit::Module copy = script.clone();  // saved in eval mode, as torch.jit.load users expect
    copy.eval();
    copy.save(bytes);
  } catch (const std::exception& e) {
    FEDRA_FAIL("cannot write the TorchScript model '{}': {}", path, torch_error_reason(e));
  }
  write_file_atomically(path, bytes.str());
}

}  // namespace

void save_scripted(const torch::nn::Sequential& model, const std::string& path) {
  std::vector<std::pair<std::string, const ScriptedImpl*>> parts;
  for (const auto& child : model->named_children()) {
    const auto* scripted = child.value()->as<ScriptedImpl>();
    if (scripted == nullptr) {
      std::optional<torch::jit::Module> script;
      try {
        script = script_of(model);
      } catch (const Error& e) {
        spdlog::warn("{} not written: {}", path, e.what());
        return;
      }
      save_script(*script, path);
      return;
    }
    parts.emplace_back(child.key(), scripted);
  }
  FEDRA_REQUIRE(!parts.empty(), "an empty model has no TorchScript to write");
  if (parts.size() == 1 && !parts[0].second->root()) {  // the whole script
    save_script(parts[0].second->script(), path);
  } else if (parts[0].second->root()) {  // children of one script: the whole script holds them
    save_script(*parts[0].second->root(), path);
  } else {  // part files
    const std::string stem = path.size() > 3 && path.substr(path.size() - 3) == ".pt" ? path.substr(0, path.size() - 3)
                                                                                      : path;
    for (const auto& [name, scripted] : parts) save_script(scripted->script(), stem + "." + name + ".pt");
  }
}

void save_trained_model(const std::string& out_dir, const torch::nn::Sequential& model) {
  save_model_file(out_dir + "/model.bin", model_state(*model));
  save_scripted(model, out_dir + "/model.pt");
}

ExportedModel model_from_checkpoint(const std::string& where, uint32_t round) {
  namespace fs = std::filesystem;
  std::string state_json = where;
  if (fs::is_directory(where)) {
    state_json = fs::exists(where + "/checkpoint/state.json") ? where + "/checkpoint/state.json" : where + "/state.json";
  }
  FEDRA_REQUIRE(fs::is_regular_file(state_json), "no checkpoint at '{}': give a run directory (--out of a run with "
                "checkpoints), its checkpoint/ directory or a state.json", where);
  nlohmann::json j;
  try {
    std::ifstream in(state_json);
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    FEDRA_FAIL("'{}' is not a checkpoint's state.json: {}", state_json, e.what());
  }
  for (const char* key : {"round", "state_file", "strategy", "model", "seed"}) {
    FEDRA_REQUIRE(j.contains(key), "'{}' lacks '{}'", state_json, key);
  }
  ExportedModel out;
  out.round = j["round"].get<uint32_t>();
  out.spec = j["model"].get<std::string>();
  out.strategy = j["strategy"].get<std::string>();
  const uint64_t seed = std::stoull(j["seed"].get<std::string>());
  std::string file = (fs::path(state_json).parent_path() / j["state_file"].get<std::string>()).string();
  if (round > 0 && round != out.round) {
    file = (fs::path(state_json).parent_path() / fmt::format("round-{}.bin", round)).string();
    FEDRA_REQUIRE(fs::is_regular_file(file), "no checkpoint of round {} beside '{}' (the latest is round {}; "
                  "--checkpoint-keep N keeps the last N)", round, state_json, out.round);
    out.round = round;
  }
  const NamedTensors state = load_model_file(file);
  if (out.strategy == "split") {
    const bool ushaped = j.contains("config") && j["config"].value("split.labels", "coordinator") == "worker";
    out.model = split_model(out.spec, seed, ushaped).full;
  } else {
    out.model = build_model(out.spec, seed);
  }
  std::map<std::string, const at::Tensor*> stored;
  for (const auto& [name, t] : state) stored.emplace(name, &t);
  NamedTensors weights;
  for (const auto& [name, t] : model_state(*out.model)) {
    const at::Tensor* found = nullptr;
    for (const std::string prefix : {"", "model/", "top/", "relay/"}) {
      const auto it = stored.find(prefix + name);
      if (it == stored.end()) continue;
      FEDRA_REQUIRE(found == nullptr, "checkpoint '{}' holds '{}' twice (as {}); cannot tell which is the model's",
                    state_json, name, it->first);
      found = it->second;
    }
    FEDRA_REQUIRE(found != nullptr, "checkpoint '{}' of strategy {} holds no '{}' for model '{}'", state_json,
                  out.strategy, name, out.spec);
    weights.emplace_back(name, *found);
  }
  load_model_state(*out.model, weights);
  out.model->eval();
  return out;
}

}  // namespace fedra
