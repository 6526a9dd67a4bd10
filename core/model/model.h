// Models from spec strings; the same spec and seed build the same network in every process.
//
//   mlp:784-200-200-10   fully connected, ReLU between layers (McMahan et al.'s "2NN" is this,
//                        199,210 weights); flattens its input first
//   cnn                  McMahan et al.'s CNN for 28x28x1 inputs: conv5x5x32 - pool - conv5x5x64
//                        - pool - fc512 - fc10 (1,663,370 weights)
//   lenet5               LeNet-5 for 28x28x1 inputs (61,706 weights)
//   psnet                PSL.md's partially separable net for 28x28x1 inputs: shared convs, then
//                        one tower of separable layers per class (46,740 weights for 10 classes)
//   cnn:classes=C, lenet5:classes=C, psnet:classes=C  set the output width (default 10)
// Split learning cuts the network between named layers, given in the same spec:
//   cnn:cut=pool1               conv1, relu1, pool1 below the cut; the rest above
//   cnn:cut=pool1,head=fc2      the U-shaped variant: fc2 on (the head) also stays below
//   mlp:784-256-10,cut=relu1    for mlp, after the widths
// Every other use of the spec ignores cut and head: it is the same network.
// Layers have stable names (conv1, fc1, ...), which become the tensor names on the wire.
// Models output logits; the loss (core/training/training.h) applies softmax or sigmoid.
//
// TorchScript models (core/model/script_model.h) come in through the same build_model: a spec
// "torchscript:PATH..." builds the scripted network. A model's state and files are in
// core/model/state.h.
#pragma once

#include <cstdint>
#include <string>

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>
#include <torch/nn/modules/container/sequential.h>

#include "core/kit/message.h"
#include "core/kit/options.h"
#include "core/model/state.h"

namespace fedra {
struct Dataset;
}

namespace fedra {

// A block-diagonal dense layer: the input is cut into `blocks` contiguous chunks, block b maps
// chunk b to `out_per_block` outputs, the outputs are concatenated (PSL.md's separable layer).
// weight is [blocks, out_per_block, in / blocks] and bias [blocks, out_per_block], so block b's
// weights are row b of each.
class SeparableLinearImpl : public torch::nn::Module {
 public:
  SeparableLinearImpl(int64_t in, int64_t blocks, int64_t out_per_block);
  at::Tensor forward(const at::Tensor& x);
  at::Tensor weight, bias;

 private:
  int64_t in_, blocks_, out_;
};
TORCH_MODULE(SeparableLinear);

// Seeds torch's global generator with `seed`, then builds the network.
torch::nn::Sequential build_model(const std::string& spec, uint64_t seed);

struct ModelSpec {
  std::string network;  // the spec without cut= and head=
  std::string cut;      // the last layer below the cut (empty: none given)
  std::string head;     // the first layer of the worker-side head (empty: none given)
};
ModelSpec parse_model_spec(const std::string& text);

// The network cut in two (or three) consecutive parts sharing the modules of `full`, so their
// parameters are exactly the whole network's, initialised as build_model(spec, seed) would.
// Parameter names are the whole network's ("conv1.weight" in bottom, "fc1.weight" in top).
struct SplitModel {
  torch::nn::Sequential full{nullptr};
  torch::nn::Sequential bottom{nullptr};  // input .. cut
  torch::nn::Sequential top{nullptr};     // after the cut .. before the head (or the end)
  torch::nn::Sequential head{nullptr};    // with_head: the head .. the end
};
// with_head: the U-shaped variant; without head= in the spec the head is the last layer that
// has parameters. Errors name the layers the network has.
SplitModel split_model(const std::string& spec, uint64_t seed, bool with_head);
std::vector<std::string> layer_names(const torch::nn::Sequential& model);

// The network as consecutive layers, for a strategy that cuts it into stages (pipeline): a
// TorchScript model as script_layers(spec, data) (core/model/script_model.h), any other spec as
// build_model(spec, seed).
torch::nn::Sequential layered_model(const std::string& spec, uint64_t seed, const Dataset* data = nullptr);

// Builds the network from torch's global generator as it stands, without seeding it (for
// reproducing a script that draws its data and its model from one seeded stream).
torch::nn::Sequential build_model_unseeded(const std::string& spec);

// The initial model of a step-driven strategy (tensor, pipeline):
//   init = "seed"        build_model(spec, seed)
//   init = "after-data"  torch's generator continues after the synthetic dataset's draws (as a
//                        script that draws data and model from one seeded stream), first
//                        discarding what `skip` names, then builds the model.
// `skip` is empty, a count N (build and discard N models of `spec`), or space-separated items
// SPEC[*K]: a model spec, or linear:IN-OUT[:nobias] for one torch Linear layer, each built K
// times and discarded (the notebook's throwaway layers draw from the generator too).
torch::nn::Sequential build_initial_model(const std::string& spec, uint64_t seed, const std::string& init,
                                          const std::string& skip, const std::string& dataset);
// Checks `init` and the syntax of `skip` without drawing anything (options' validate()).
void check_initial_model_options(const std::string& init, const std::string& skip, const std::string& prefix);

enum class Init { kSeed, kAfterData };
FEDRA_ENUM_NAMES(Init, {Init::kSeed, "seed"}, {Init::kAfterData, "after-data"})

// How the initial model is drawn (build_initial_model), an option group (core/kit/option_groups.h).
struct InitOptions {
  FEDRA_ARG(Init, init) = Init::kSeed;
  FEDRA_ARG(std::string, init_skip) = "";

  template <class F>
  void visit(F&& f) {
    f("init", init_, "seed (from --seed) or after-data (drawn after the synthetic data, as the seed notebook does)");
    f("init_skip", init_skip_, "with after-data: N models, or items (core/model/model.h), drawn and discarded first");
  }
  void validate(const std::string& scope) const;
};

}  // namespace fedra
