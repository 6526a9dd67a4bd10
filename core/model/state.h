// A model's state: its parameters and buffers as named tensors, in and out of modules and files.
//
// model_state() lists parameters then buffers by name, sharing the module's storage;
// load_model_state() copies a state in, checking that names, shapes and dtypes match and saying
// which does not. A model file is one wire frame (an Envelope of kind "model" whose tensors are
// the state), so `capnp decode transport/schema/fedra.capnp Envelope < model.bin` reads it too.
#pragma once

#include <cstdint>
#include <string>

#include <torch/nn/module.h>

#include "core/kit/message.h"

namespace fedra {

int64_t count_parameters(const torch::nn::Module& model);

// Detached tensors sharing the model's storage.
NamedTensors model_state(const torch::nn::Module& model);
// Copies `state` into the model's parameters and buffers (no autograd history).
void load_model_state(torch::nn::Module& model, const NamedTensors& state);

// Written atomically (temporary file, fsync, rename); errors name the file.
void save_model_file(const std::string& path, const NamedTensors& state);
NamedTensors load_model_file(const std::string& path);

}  // namespace fedra
