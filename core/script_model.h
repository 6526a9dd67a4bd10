// TorchScript models: `--model torchscript:PATH`, a file written in Python by
// `torch.jit.script(net).save(PATH)` or `torch.jit.trace(net, x).save(PATH)` (Debian's
// python3-torch is the same 1.13 as LibTorch).
//
// The scripted module runs its own forward. Scripted wraps it as a torch::nn::Module whose
// parameters and buffers ARE the script's tensors (the same storage, under the script's names),
// so everything that trains, averages, sends or loads a torch::nn::Module (optimisers,
// model_state, load_model_state, FedAvg) works on it unchanged, and saving the script module
// afterwards (save_scripted) writes the trained weights. train()/eval() reach the script, so
// dropout and batch norm behave as in Python.
//
// build_model("torchscript:PATH", seed) (core/model.h) returns a Sequential with one child,
// "net": the tensor names are "net." + the script's names (e.g. net.block_a.conv.weight). The
// file's own weights are the initial model: every process that loads the file starts from them,
// whatever the seed.
#pragma once

#include <string>

#include <torch/nn/module.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/pimpl.h>
#include <torch/script.h>

namespace fedra {

inline constexpr const char* kTorchScriptPrefix = "torchscript:";

class ScriptedImpl : public torch::nn::Module {
 public:
  // `what` names the module in errors (the file, and the child for a part).
  ScriptedImpl(torch::jit::Module module, std::string what);
  at::Tensor forward(const at::Tensor& x);
  void train(bool on = true) override;
  const torch::jit::Module& script() const { return module_; }
  const std::string& what() const { return what_; }

 private:
  torch::jit::Module module_;
  std::string what_;
};
TORCH_MODULE(Scripted);

bool is_torchscript(const std::string& spec);
// For a strategy that takes only its own specs: refuses a TorchScript model, naming the strategy
// and `why`.
void refuse_torchscript(const std::string& spec, const std::string& strategy, const std::string& why);

// Loads the file (a clear error naming it if it is missing or not a TorchScript archive).
torch::jit::Module load_script(const std::string& path);
// The Sequential build_model returns for "torchscript:PATH".
torch::nn::Sequential scripted_model(const std::string& path);

// The trained model's files in `out_dir`: model.bin (the state as one wire frame, every model)
// and, for a TorchScript model, model.pt (its script with these weights: torch.jit.load reads it).
void save_trained_model(const std::string& out_dir, const torch::nn::Sequential& model);

// If `model` is a scripted model (one Scripted child), writes its script with the current
// weights to `path` (write_file_atomically) and returns true; false for a
// model built from a spec.
bool save_scripted(const torch::nn::Sequential& model, const std::string& path);

}  // namespace fedra
