#include "python/src/names.h"

#include <map>

#include "core/kit/error.h"

namespace fedra::python {

std::string prefix_of(const std::string& spec, const NamedTensors& model) {
  if (spec.rfind("torchscript:", 0) != 0) return "";
  for (const auto& [name, t] : model) {
    if (name.rfind("net.", 0) != 0) return "";
  }
  return "net.";
}

NamedTensors in_model_order(const NamedTensors& model, const NamedTensors& given, const std::string& spec,
                            const std::string& prefix, const std::string& what) {
  std::map<std::string, const at::Tensor*> by_name;
  for (const auto& [name, t] : given) by_name[name] = &t;
  NamedTensors ordered;
  ordered.reserve(model.size());
  for (const auto& [name, reference] : model) {
    const std::string own = name.substr(prefix.size());
    auto it = by_name.find(own);
    FEDRA_REQUIRE(it != by_name.end(), "{} lacks tensor '{}' of the job's model '{}' ({} tensors: {})", what, own,
                  spec, model.size(), [&] {
                    std::string names;
                    for (const auto& m : model) names += (names.empty() ? "" : ", ") + m.first.substr(prefix.size());
                    return names;
                  }());
    ordered.emplace_back(name, it->second->detach());
    by_name.erase(it);
  }
  FEDRA_REQUIRE(by_name.empty(), "{} has tensor '{}', which the job's model '{}' does not have", what,
                by_name.begin()->first, spec);
  return ordered;
}

}  // namespace fedra::python
