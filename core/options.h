// Options: the string key/value settings of a strategy, a dataset or a partitioner.
//
// Every option reaches Fedra as text (command line, INI config file, the job a worker receives),
// so an OptionMap holds strings and converts on request, with errors that name the option, its
// scope and the bad value. Typed option structs (FedAvgOptions, ...) declare each option once in
// a visit() method, LibTorch-style chainable accessors beside it:
//
//   struct MyOptions {
//     FEDRA_ARG(int64_t, rounds) = 10;
//     template <class F> void visit(F&& f) { f("rounds", rounds_, "rounds to run"); }
//     void validate() const;
//   };
//
// and option_specs<MyOptions>() (for --help and config files), parse_options<MyOptions>(map)
// (read and validate) and options_to_map(o) (the resolved values) all follow from that list.
//
// Specs in text form ("dirichlet:alpha=0.3", "fmnist:limit=6000") parse with parse_spec().
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "transport/error.h"

namespace fedra {

// Declares `T name_` with a chainable setter `name(T)` and a getter `name()`, as TORCH_ARG does.
#define FEDRA_ARG(T, name)                                    \
 public:                                                      \
  auto name(const T& new_##name)->decltype(*this) {           \
    this->name##_ = new_##name;                               \
    return *this;                                             \
  }                                                           \
  const T& name() const noexcept { return this->name##_; }    \
                                                              \
 public:                                                      \
  T name##_

struct OptionSpec {
  std::string name;
  std::string default_value;
  std::string help;
};

class OptionMap {
 public:
  OptionMap() = default;
  // `scope` names where the options came from in error messages ("fedavg", "dataset fmnist").
  explicit OptionMap(std::string scope, std::map<std::string, std::string> values = {})
      : scope_(std::move(scope)), values_(std::move(values)) {}

  bool has(std::string_view name) const { return values_.count(std::string(name)) != 0; }
  void set(const std::string& name, std::string value) { values_[name] = std::move(value); }
  const std::map<std::string, std::string>& values() const { return values_; }
  const std::string& scope() const { return scope_; }

  std::string get_string(std::string_view name, const std::string& fallback) const;
  int64_t get_int(std::string_view name, int64_t fallback) const;
  double get_double(std::string_view name, double fallback) const;
  bool get_bool(std::string_view name, bool fallback) const;

  // Throws naming any key not in `known` (catches typos such as "alpah=0.3").
  void require_known(const std::vector<std::string>& known) const;

 private:
  std::string scope_;
  std::map<std::string, std::string> values_;
};

// "name:key=value,key=value" -> {name, options}. A bare "name" has no options.
struct Spec {
  std::string name;
  OptionMap args;
};
Spec parse_spec(std::string_view text, std::string_view what);

std::string format_option_value(int64_t v);
std::string format_option_value(double v);
std::string format_option_value(bool v);
inline std::string format_option_value(const std::string& v) { return v; }

namespace detail {
struct SpecCollector {
  std::vector<OptionSpec>* out;
  template <class T>
  void operator()(const char* name, const T& value, const char* help) const {
    out->push_back({name, format_option_value(value), help});
  }
};
struct MapReader {
  const OptionMap* map;
  void operator()(const char* name, int64_t& v, const char*) const { v = map->get_int(name, v); }
  void operator()(const char* name, double& v, const char*) const { v = map->get_double(name, v); }
  void operator()(const char* name, bool& v, const char*) const { v = map->get_bool(name, v); }
  void operator()(const char* name, std::string& v, const char*) const {
    v = map->get_string(name, v);
  }
};
struct MapWriter {
  std::map<std::string, std::string>* out;
  template <class T>
  void operator()(const char* name, const T& value, const char*) const {
    (*out)[name] = format_option_value(value);
  }
};
}  // namespace detail

template <class Options>
std::vector<OptionSpec> option_specs() {
  std::vector<OptionSpec> specs;
  Options defaults;
  defaults.visit(detail::SpecCollector{&specs});
  return specs;
}

template <class Options>
Options parse_options(const OptionMap& map) {
  Options o;
  std::vector<std::string> known;
  for (const auto& s : option_specs<Options>()) known.push_back(s.name);
  map.require_known(known);
  o.visit(detail::MapReader{&map});
  o.validate();
  return o;
}

template <class Options>
std::map<std::string, std::string> options_to_map(Options o) {
  std::map<std::string, std::string> out;
  o.visit(detail::MapWriter{&out});
  return out;
}

}  // namespace fedra
