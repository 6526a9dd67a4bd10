// Tensors between the model's names and order and a Python state dict's (python/src/).
#pragma once

#include <string>

#include "core/kit/message.h"

namespace fedra::python {

// What the model's tensor names have that the user's module's do not: "net." for a torchscript:
// model (core/model/script_model.h wraps the script as the child "net"), "" otherwise.
std::string prefix_of(const std::string& spec, const NamedTensors& model);

// `given` (a state dict: any order, the user's names) in the model's order. The user's names are the
// model's without `prefix` ("net." for a torchscript: model). Throws Error naming a tensor missing
// or extra; `what` says whose tensors they are ("the reply", "the aggregate").
NamedTensors in_model_order(const NamedTensors& model, const NamedTensors& given, const std::string& spec,
                            const std::string& prefix, const std::string& what);

}  // namespace fedra::python
