// TorchScript models: `--model torchscript:PATH`, a file written in Python by
// `torch.jit.script(net).save(PATH)` or `torch.jit.trace(net, x).save(PATH)` (Debian's
// python3-torch is the same 1.13 as LibTorch).
//
// The scripted module runs its own forward. Scripted wraps it as a torch::nn::Module whose
// parameters and buffers ARE the script's tensors (the same storage, under the script's names),
// so everything that trains, averages, sends or loads a torch::nn::Module (optimisers,
// model_state, load_model_state, FedAvg) works on it unchanged, and saving the script module
// afterwards (save_scripted, core/model/export.h) writes the trained weights. train()/eval() reach the script, so
// dropout and batch norm behave as in Python.
//
// build_model("torchscript:PATH", seed) (core/model/model.h) returns a Sequential with one child,
// "net": the tensor names are "net." + the script's names (e.g. net.block_a.conv.weight). The
// file's own weights are the initial model: every process that loads the file starts from them,
// whatever the seed.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/pimpl.h>
#include <torch/script.h>

#include "core/data/dataset.h"

namespace fedra {

inline constexpr const char* kTorchScriptPrefix = "torchscript:";

class ScriptedImpl : public torch::nn::Module {
 public:
  // `what` names the module in errors (the file, and the child for a part). `root`: for a child
  // of a script cut by child name, the whole script (it shares the child's tensors), which is
  // what model.pt holds.
  ScriptedImpl(torch::jit::Module module, std::string what, std::optional<torch::jit::Module> root = std::nullopt);
  at::Tensor forward(const at::Tensor& x);
  void train(bool on = true) override;
  const torch::jit::Module& script() const { return module_; }
  const std::string& what() const { return what_; }
  const std::optional<torch::jit::Module>& root() const { return root_; }

 private:
  torch::jit::Module module_;
  std::string what_;
  std::optional<torch::jit::Module> root_;
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

// The names (as model_state() lists them) of the parameters and buffers of every batch norm layer
// in `model`: scripted BatchNorm1d/2d/3d modules and LibTorch's BatchNorm modules.
std::vector<std::string> batchnorm_tensor_names(const torch::nn::Module& model);

// The three forms of a TorchScript model spec (docs/models.md):
//   torchscript:PATH                          the whole script, its own forward
//   torchscript:PATH,cut=NAME[,head=NAME]     for split learning: the script's top-level children
//                                             run in order, cut after child NAME (head=NAME: the
//                                             U-shaped variant's head starts at child NAME); every
//                                             other use trains the whole script
//   torchscript:bottom=PATH,top=PATH[,head=PATH]  a network given as separate scripts run one after
//                                             the other (bottom, top, head); split learning cuts
//                                             between the files, other uses train the chain
struct ScriptSpec {
  std::string path;                     // the whole script (first two forms)
  std::string cut, head;                // child names (second form)
  std::string bottom, top, head_file;  // the parts (third form)
  bool parts() const { return !bottom.empty(); }
};
ScriptSpec parse_script_spec(const std::string& spec);

// The network as a Sequential of scripted parts for split learning: the script's top-level
// children (tensor names are the script's: "block_a.conv.weight"), or the part files (named
// bottom, top, head: "bottom.conv.weight"). `cut` and `head` are the Sequential's child names
// where split_model (core/model/model.h) cuts; head is empty when the spec names none.
struct ScriptChain {
  torch::nn::Sequential full{nullptr};
  std::string cut, head;
};
ScriptChain script_chain(const std::string& spec);

// A TorchScript model as consecutive layers (script_chain(spec).full: its top-level children, or
// the part files), after checking on the first example of `data` (if given) that the children run
// in order give the script's own output. (layered_model in core/model/model.h takes any spec.)
torch::nn::Sequential script_layers(const std::string& spec, const Dataset* data = nullptr);

// For the second form: Throws Error (one line) unless running the script's children one after the
// other on `x` gives what the script's own forward gives (evaluation mode), i.e. unless cutting it
// by child name keeps the network.
// always: check a first-form spec (no cut=) too.
void check_children_in_order(const std::string& spec, const at::Tensor& x, bool always = false);

}  // namespace fedra
