#include "core/kit/message.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <c10/util/Exception.h>

namespace fedra {

namespace {

struct ScalarTypePair {
  transport::DType wire;
  c10::ScalarType torch;
};
constexpr ScalarTypePair kTypes[] = {
    {transport::DType::kFloat32, c10::ScalarType::Float},
    {transport::DType::kFloat64, c10::ScalarType::Double},
    {transport::DType::kFloat16, c10::ScalarType::Half},
    {transport::DType::kBFloat16, c10::ScalarType::BFloat16},
    {transport::DType::kInt8, c10::ScalarType::Char},
    {transport::DType::kUInt8, c10::ScalarType::Byte},
    {transport::DType::kInt16, c10::ScalarType::Short},
    {transport::DType::kInt32, c10::ScalarType::Int},
    {transport::DType::kInt64, c10::ScalarType::Long},
    {transport::DType::kBool, c10::ScalarType::Bool},
    {transport::DType::kComplex64, c10::ScalarType::ComplexFloat},
    {transport::DType::kComplex128, c10::ScalarType::ComplexDouble},
};

// Owns the tensors an outgoing Envelope references.
struct HeldTensors {
  std::vector<at::Tensor> tensors;
};

}  // namespace

c10::ScalarType to_scalar_type(transport::DType dtype) {
  for (const auto& p : kTypes) {
    if (p.wire == dtype) return p.torch;
  }
  FEDRA_FAIL("dtype {} has no torch equivalent", transport::dtype_name(dtype));
}

transport::DType to_wire_dtype(c10::ScalarType type) {
  for (const auto& p : kTypes) {
    if (p.torch == type) return p.wire;
  }
  FEDRA_FAIL("torch dtype {} cannot be sent over the wire", c10::toString(type));
}

std::string torch_error_reason(const std::exception& e) {
  if (const auto* c10 = dynamic_cast<const c10::Error*>(&e)) {
    const std::string msg = c10->what_without_backtrace();
    return msg.substr(0, msg.find('\n'));
  }
  std::string msg = e.what();
  while (!msg.empty() && msg.back() == '\n') msg.pop_back();
  const size_t last = msg.rfind('\n');
  if (last != std::string::npos) msg = msg.substr(last + 1);
  if (msg.rfind("RuntimeError: ", 0) == 0) msg = msg.substr(14);
  return msg;
}

std::string describe_tensor(const at::Tensor& t) {
  const std::string_view dtype = transport::dtype_name(to_wire_dtype(t.scalar_type()));
  return fmt::format("{}[{}]", dtype, fmt::join(t.sizes(), ","));
}

void Message::expect_kind(std::string_view expected, std::string_view who) const {
  FEDRA_REQUIRE(kind == expected, "expected '{}' from {}, got '{}'", expected, who, kind);
}

void Message::require_options(std::initializer_list<std::string_view> names) const {
  for (const std::string_view name : names) {
    FEDRA_REQUIRE(options.count(std::string(name)), "'{}' lacks the option '{}'", kind, name);
  }
}

const at::Tensor& Message::tensor(std::string_view name) const {
  for (const auto& [n, t] : tensors) {
    if (n == name) return t;
  }
  FEDRA_FAIL("message '{}' has no tensor '{}'", kind, name);
}

double Message::metric(std::string_view name) const {
  auto it = metrics.find(std::string(name));
  FEDRA_REQUIRE(it != metrics.end(), "message '{}' has no metric '{}'", kind, name);
  return it->second;
}

double Message::metric_or(std::string_view name, double fallback) const {
  auto it = metrics.find(std::string(name));
  return it == metrics.end() ? fallback : it->second;
}

const std::string& Message::option(std::string_view name) const {
  auto it = options.find(std::string(name));
  FEDRA_REQUIRE(it != options.end(), "message '{}' has no option '{}'", kind, name);
  return it->second;
}

std::string Message::option_or(std::string_view name, std::string fallback) const {
  auto it = options.find(std::string(name));
  return it == options.end() ? fallback : it->second;
}

transport::Envelope to_envelope(const Message& message) {
  transport::Envelope env;
  env.kind = message.kind;
  env.round = message.round;
  env.step = message.step;
  env.sender = message.sender;
  env.metrics.assign(message.metrics.begin(), message.metrics.end());
  env.options.assign(message.options.begin(), message.options.end());
  env.error = message.error;
  auto held = std::make_shared<HeldTensors>();
  held->tensors.reserve(message.tensors.size());
  env.tensors.reserve(message.tensors.size());
  for (const auto& [name, tensor] : message.tensors) {
    FEDRA_REQUIRE(tensor.defined(), "tensor '{}' of message '{}' is undefined", name,
                  message.kind);
    FEDRA_REQUIRE(tensor.device().is_cpu(), "tensor '{}' of message '{}' is on {}, move it to "
                  "the CPU before sending", name, message.kind, tensor.device().str());
    at::Tensor t = tensor.is_contiguous() ? tensor : tensor.contiguous();
    transport::TensorData td;
    td.name = name;
    td.dtype = to_wire_dtype(t.scalar_type());
    td.shape.assign(t.sizes().begin(), t.sizes().end());
    td.data = static_cast<const std::byte*>(t.data_ptr());
    td.nbytes = t.nbytes();
    env.tensors.push_back(std::move(td));
    held->tensors.push_back(std::move(t));
  }
  env.storage = std::move(held);
  return env;
}

Message from_envelope(transport::Envelope&& env) {
  Message m;
  m.kind = std::move(env.kind);
  m.round = env.round;
  m.step = env.step;
  m.sender = std::move(env.sender);
  m.metrics.insert(env.metrics.begin(), env.metrics.end());
  m.options.insert(env.options.begin(), env.options.end());
  m.error = std::move(env.error);
  std::shared_ptr<const void> storage = env.storage;
  m.tensors.reserve(env.tensors.size());
  for (auto& td : env.tensors) {
    const auto options = at::TensorOptions().dtype(to_scalar_type(td.dtype));
    at::Tensor t;
    if (td.nbytes == 0) {
      t = at::empty(td.shape, options);
    } else {
      // The buffer is read-only in spirit (it may back several tensors), but torch has no
      // const tensors: strategies that modify a received tensor in place own that choice.
      t = at::from_blob(const_cast<std::byte*>(td.data), td.shape,
                        [storage](void*) mutable { storage.reset(); }, options);
    }
    m.tensors.emplace_back(std::move(td.name), std::move(t));
  }
  return m;
}

NamedTensors take_prefixed(NamedTensors& all, std::string_view prefix) {
  NamedTensors taken, rest;
  for (auto& [name, t] : all) {
    if (name.compare(0, prefix.size(), prefix) == 0) {
      taken.emplace_back(name.substr(prefix.size()), std::move(t));
    } else {
      rest.emplace_back(std::move(name), std::move(t));
    }
  }
  all = std::move(rest);
  return taken;
}

void append_prefixed(NamedTensors& all, std::string_view prefix, const NamedTensors& extra) {
  for (const auto& [name, t] : extra) all.emplace_back(std::string(prefix) + name, t);
}

}  // namespace fedra
