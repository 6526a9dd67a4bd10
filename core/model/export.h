// The trained model's files: what a run leaves in its output directory, and the trained model
// rebuilt from a checkpoint (`fedra export`).
#pragma once

#include <cstdint>
#include <string>

#include <torch/csrc/jit/api/module.h>
#include <torch/nn/modules/container/sequential.h>

namespace fedra {

// A model built from a spec (mlp, cnn, lenet5, psnet) as a TorchScript module that computes what
// it computes, with a copy of its weights under the same names ("fc1.weight"): written by
// Fedra (no Python involved), read by torch.jit.load. Throws Error naming a layer it cannot write.
torch::jit::Module script_of(const torch::nn::Sequential& model);

// Writes the model as TorchScript with its current weights to `path` (write_file_atomically): a
// script model's own script, or script_of a model built from a spec. A network cut by
// child name writes the whole script; one given as part files writes each part beside `path`
// (model.pt -> model.bottom.pt, model.top.pt, model.head.pt).
void save_scripted(const torch::nn::Sequential& model, const std::string& path);

// The trained model's files in `out_dir`: model.bin (the state as one wire frame, every model)
// and model.pt (TorchScript with these weights: torch.jit.load reads it; for a script model its
// own script, for a spec the script_of it).
void save_trained_model(const std::string& out_dir, const torch::nn::Sequential& model);

// A checkpoint (core/runtime/coordinator.cc: OUT/checkpoint/state.json and the round's state file) as the
// trained model: the model its spec builds, with the checkpoint's weights (stored under their
// names, or under "model/", "top/" or "relay/" as the step-driven strategies keep them).
// `where` is a run directory, its checkpoint directory, or a state.json. Errors name what is
// missing.
struct ExportedModel {
  torch::nn::Sequential model{nullptr};
  uint32_t round = 0;
  std::string spec, strategy;
};
// round > 0: the state file of that round (round-N.bin beside state.json) instead of the latest.
ExportedModel model_from_checkpoint(const std::string& where, uint32_t round = 0);

}  // namespace fedra
