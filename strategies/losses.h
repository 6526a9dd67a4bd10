// Per-step training losses of the step-driven strategies that return them per round (tensor,
// pipeline): one float64 loss and one int64 example count per step, in step order.
#pragma once

#include <cstdint>
#include <string>
#include <utility>

#include <ATen/core/Tensor.h>

namespace fedra {

// Appends one round's steps to OUT/losses.csv ("round,step,loss,examples"; the loss is empty
// for a step without examples), creating it with its header. No-op when out_dir is empty.
void append_losses(const std::string& out_dir, uint32_t round, int64_t first_step, const at::Tensor& loss,
                   const at::Tensor& examples);

// The first step's loss (NaN if it had no examples) and the mean over steps with examples.
std::pair<double, double> loss_summary(const at::Tensor& loss, const at::Tensor& examples);

// Checks a reply's loss and example tensors: float64 and int64, `steps` long.
void check_losses(const at::Tensor& loss, const at::Tensor& examples, int64_t steps, const std::string& who);

}  // namespace fedra
