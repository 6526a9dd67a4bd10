// Options: the typed settings of a strategy, a dataset or a partitioner.
//
// Every option reaches Fedra as text (command line, INI config file, the job a worker receives),
// so an OptionMap holds strings and converts on request, with errors that name the option, its
// scope and the bad value. Typed option structs declare each option once, LibTorch-style
// (FEDRA_ARG gives chainable setters, as TORCH_ARG does), and list it once in visit():
//
//   enum class Reduce { kSum, kMean };
//   FEDRA_ENUM_NAMES(Reduce, {Reduce::kSum, "sum"}, {Reduce::kMean, "mean"})
//
//   struct MyOptions {
//     FEDRA_ARG(int64_t, rounds) = 10;
//     FEDRA_ARG(Reduce, reduce) = Reduce::kSum;            // an enum: parsed, listed, refused by name
//     FEDRA_ARG(OptimizerOptions, optim) = OptimizerOptions().lr(0.1);  // a group (option_groups.h)
//     FEDRA_ARG(MyTesting, testing);                        // fault injection, hidden from --help
//     template <class F> void visit(F&& f) {
//       f("rounds", rounds_, "rounds to run");
//       f("reduce", reduce_, "sum or mean of the gradients");
//       f.group(optim_);    // its options appear beside the others: optimizer, lr, ...
//       f.testing(testing_);  // its options are named testing.NAME
//     }
//     void validate() const;   // checks across options; groups validate themselves
//   };
//
// option_specs<MyOptions>() (for --help and config files), parse_options<MyOptions>(map) (read
// and validate: unknown names, bad values and bad enum choices are refused naming the option)
// and options_to_map(o) (the resolved values) all follow from that one list. A group is a struct
// with the same visit() and a validate(scope) that checks its own options once, for every
// strategy that uses it.
//
// Specs in text form ("dirichlet:alpha=0.3", "fmnist:limit=6000") parse with parse_spec().
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/kit/error.h"

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
  std::vector<std::string> choices;  // an enum option's allowed values; empty otherwise
  bool testing = false;              // fault injection for tests: hidden from --help
};

// ---------------------------------------------------------------------------------------------
// Enums. FEDRA_ENUM_NAMES(E, {E::kA, "a"}, ...) in E's namespace makes E an option type: its
// text names parse, print and are listed in --help.

template <class E>
struct EnumName {
  E value;
  const char* name;
};

#define FEDRA_ENUM_NAMES(E, ...)                                               \
  inline const std::vector<::fedra::EnumName<E>>& fedra_enum_names(E) {        \
    static const std::vector<::fedra::EnumName<E>> names{__VA_ARGS__};         \
    return names;                                                              \
  }

template <class E>
const std::vector<EnumName<E>>& enum_names() {
  return fedra_enum_names(E{});
}

template <class E>
const char* enum_name(E value) {
  for (const auto& n : enum_names<E>()) {
    if (n.value == value) return n.name;
  }
  return "?";
}

template <class E>
std::vector<std::string> enum_choices(const std::vector<E>& allowed = {}) {
  std::vector<std::string> out;
  for (const auto& n : enum_names<E>()) {
    bool ok = allowed.empty();
    for (E a : allowed) ok = ok || a == n.value;
    if (ok) out.emplace_back(n.name);
  }
  return out;
}

// "a, b or c"
std::string join_choices(const std::vector<std::string>& choices);

// The refusal of a value that is not one of an enum option's names: "SCOPE.NAME must be a or b,
// got 'x'". An enum may word its own with an overload for its type, found by ADL.
template <class E>
std::string fedra_enum_refusal(E, const std::string& scope, std::string_view name, const std::string& value,
                               const std::vector<std::string>& choices) {
  return fmt::format("{}.{} must be {}, got '{}'", scope, name, join_choices(choices), value);
}

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
  // An enum option: one of `allowed` (all of E's names when empty), else an error listing them.
  template <class E>
  E get_enum(std::string_view name, E fallback, const std::vector<E>& allowed = {}) const {
    if (!has(name)) return fallback;
    const std::string v = get_string(name, "");
    for (const auto& n : enum_names<E>()) {
      if (v != n.name) continue;
      bool ok = allowed.empty();
      for (E a : allowed) ok = ok || a == n.value;
      if (ok) return n.value;
    }
    FEDRA_FAIL("{}", fedra_enum_refusal(E{}, scope_, name, v, enum_choices<E>(allowed)));
  }

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

// Every duration option in seconds is checked alike: finite, > 0 (or >= 0 where zero means
// `zero_means`, "none"), and at most kMaxSeconds, which a std::chrono duration in milliseconds
// holds (a larger one wrapped to a negative timeout) and which still means something.
inline constexpr double kMaxSeconds = 1e9;  // 31 years
void check_seconds(double seconds, const std::string& scope, const char* name, const char* zero_means = nullptr);

std::string format_option_value(int64_t v);
std::string format_option_value(double v);
std::string format_option_value(bool v);
inline std::string format_option_value(const std::string& v) { return v; }
template <class E, std::enable_if_t<std::is_enum<E>::value, int> = 0>
std::string format_option_value(E v) {
  return enum_name(v);
}

namespace detail {

// The base of every visitor: the "testing." prefix and the group recursion.
template <class Derived>
struct OptionVisitor {
  std::string prefix;
  bool testing_scope = false;

  template <class G>
  void group(G& g) {
    g.visit(self());
  }
  template <class G>
  void testing(G& g) {
    const std::string saved = prefix;
    const bool saved_testing = testing_scope;
    prefix += "testing.";
    testing_scope = true;
    g.visit(self());
    prefix = saved;
    testing_scope = saved_testing;
  }
  std::string full(const char* name) const { return prefix + name; }
  Derived& self() { return static_cast<Derived&>(*this); }
};

struct SpecCollector : OptionVisitor<SpecCollector> {
  std::vector<OptionSpec>* out = nullptr;
  template <class T>
  void operator()(const char* name, const T& value, const char* help) {
    OptionSpec s{full(name), format_option_value(value), help, {}, testing_scope};
    if constexpr (std::is_enum<T>::value) s.choices = enum_choices<T>();
    out->push_back(std::move(s));
  }
  template <class E>
  void operator()(const char* name, const E& value, const char* help, const std::vector<E>& allowed) {
    out->push_back({full(name), format_option_value(value), help, enum_choices<E>(allowed), testing_scope});
  }
};

struct MapReader : OptionVisitor<MapReader> {
  const OptionMap* map = nullptr;
  void operator()(const char* name, int64_t& v, const char*) { v = map->get_int(full(name), v); }
  void operator()(const char* name, double& v, const char*) { v = map->get_double(full(name), v); }
  void operator()(const char* name, bool& v, const char*) { v = map->get_bool(full(name), v); }
  void operator()(const char* name, std::string& v, const char*) { v = map->get_string(full(name), v); }
  template <class E, std::enable_if_t<std::is_enum<E>::value, int> = 0>
  void operator()(const char* name, E& v, const char*, const std::vector<E>& allowed = {}) {
    v = map->get_enum(full(name), v, allowed);
  }
  // Groups check their own options as they are read.
  template <class G>
  void group(G& g) {
    g.visit(*this);
    g.validate(map->scope());
  }
  template <class G>
  void testing(G& g) {
    OptionVisitor<MapReader>::testing(g);
    g.validate(map->scope());
  }
};

struct MapWriter : OptionVisitor<MapWriter> {
  std::map<std::string, std::string>* out = nullptr;
  template <class T, class... Rest>
  void operator()(const char* name, const T& value, const char*, const Rest&...) {
    (*out)[full(name)] = format_option_value(value);
  }
};

// A whole option struct validates with validate(), a group with validate(scope).
template <class O>
auto validate_options(const O& o, const std::string&, int) -> decltype(o.validate(), void()) {
  o.validate();
}
template <class O>
void validate_options(const O& o, const std::string& scope, long) {
  o.validate(scope);
}

}  // namespace detail

template <class Options>
std::vector<OptionSpec> option_specs() {
  std::vector<OptionSpec> specs;
  Options defaults;
  detail::SpecCollector c;
  c.out = &specs;
  defaults.visit(c);
  return specs;
}

template <class Options>
Options parse_options(const OptionMap& map) {
  Options o;
  std::vector<std::string> known;
  for (const auto& s : option_specs<Options>()) known.push_back(s.name);
  map.require_known(known);
  detail::MapReader r;
  r.map = &map;
  o.visit(r);
  detail::validate_options(o, map.scope(), 0);
  return o;
}

template <class Options>
std::map<std::string, std::string> options_to_map(Options o) {
  std::map<std::string, std::string> out;
  detail::MapWriter w;
  w.out = &out;
  o.visit(w);
  return out;
}

// The options as a Job carries them: every value as text, defaults included.
template <class Options>
OptionMap to_option_map(const Options& o, std::string scope) {
  return OptionMap(std::move(scope), options_to_map(o));
}

}  // namespace fedra
