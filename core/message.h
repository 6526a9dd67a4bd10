// Message: what strategies send and receive.
//
// A Message is the training-side view of one wire Envelope: a kind ("fedavg.fit"), the round and
// step it belongs to, named tensors, scalar metrics, string options and an optional error.
// Strategies build and read Messages; the runtime turns them into frames (to_envelope) and back
// (from_envelope) without copying tensor bytes:
//  - to_envelope references the memory of contiguous CPU tensors; the Envelope's storage keeps
//    those tensors alive until the frame is written. Non-contiguous tensors are made contiguous
//    first (one copy, owned the same way).
//  - from_envelope wraps each received tensor with torch::from_blob and a deleter that holds the
//    frame buffer, so a received model is used in place.
// Received tensors share one buffer; call .clone() on one to keep it past the others cheaply.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "transport/codec.h"

namespace fedra {

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

struct Message {
  std::string kind;
  uint32_t round = 0;
  uint64_t step = 0;
  std::string sender;
  NamedTensors tensors;
  std::map<std::string, double> metrics;
  std::map<std::string, std::string> options;
  std::optional<transport::WireError> error;

  Message() = default;
  explicit Message(std::string message_kind, uint32_t message_round = 0)
      : kind(std::move(message_kind)), round(message_round) {}

  // Lookups throw Error naming the missing entry and the message kind.
  const at::Tensor& tensor(std::string_view name) const;
  double metric(std::string_view name) const;
  double metric_or(std::string_view name, double fallback) const;
  const std::string& option(std::string_view name) const;
  std::string option_or(std::string_view name, std::string fallback) const;
};

// "float32[2,3]": dtype and shape, for error messages.
std::string describe_tensor(const at::Tensor& t);

c10::ScalarType to_scalar_type(transport::DType dtype);
transport::DType to_wire_dtype(c10::ScalarType type);

// Tensors must live on the CPU. The Envelope shares ownership of every tensor it references.
transport::Envelope to_envelope(const Message& message);
Message from_envelope(transport::Envelope&& envelope);

}  // namespace fedra
