#include "core/model/model.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <mutex>

#include <fmt/ranges.h>
#include <torch/torch.h>

#include "core/data/dataset.h"
#include "core/kit/options.h"
#include "core/model/script_model.h"

namespace fedra {

namespace nn = torch::nn;

namespace {

nn::Sequential mlp(const std::string& dims_text, const std::string& spec) {
  std::vector<int64_t> dims;
  size_t at = 0;
  while (at <= dims_text.size()) {
    const size_t dash = dims_text.find('-', at);
    const std::string item = dims_text.substr(at, dash == std::string::npos ? std::string::npos : dash - at);
    char* end = nullptr;
    const long long v = std::strtoll(item.c_str(), &end, 10);
    FEDRA_REQUIRE(!item.empty() && end == item.c_str() + item.size() && v > 0,
                  "model '{}': '{}' is not a positive layer width (expected e.g. "
                  "mlp:784-200-200-10)",
                  spec, item);
    dims.push_back(v);
    if (dash == std::string::npos) break;
    at = dash + 1;
  }
  FEDRA_REQUIRE(dims.size() >= 2, "model '{}' needs at least an input and an output width", spec);
  nn::Sequential seq;
  seq->push_back("flatten", nn::Flatten());
  for (size_t i = 0; i + 1 < dims.size(); ++i) {
    seq->push_back(fmt::format("fc{}", i + 1), nn::Linear(dims[i], dims[i + 1]));
    if (i + 2 < dims.size()) seq->push_back(fmt::format("relu{}", i + 1), nn::ReLU());
  }
  return seq;
}

nn::Sequential mcmahan_cnn(int64_t classes) {
  nn::Sequential seq;
  seq->push_back("conv1", nn::Conv2d(nn::Conv2dOptions(1, 32, 5).padding(2)));
  seq->push_back("relu1", nn::ReLU());
  seq->push_back("pool1", nn::MaxPool2d(2));
  seq->push_back("conv2", nn::Conv2d(nn::Conv2dOptions(32, 64, 5).padding(2)));
  seq->push_back("relu2", nn::ReLU());
  seq->push_back("pool2", nn::MaxPool2d(2));
  seq->push_back("flatten", nn::Flatten());
  seq->push_back("fc1", nn::Linear(7 * 7 * 64, 512));
  seq->push_back("relu3", nn::ReLU());
  seq->push_back("fc2", nn::Linear(512, classes));
  return seq;
}

nn::Sequential lenet5(int64_t classes) {
  nn::Sequential seq;
  seq->push_back("conv1", nn::Conv2d(nn::Conv2dOptions(1, 6, 5).padding(2)));
  seq->push_back("relu1", nn::ReLU());
  seq->push_back("pool1", nn::MaxPool2d(2));
  seq->push_back("conv2", nn::Conv2d(nn::Conv2dOptions(6, 16, 5)));
  seq->push_back("relu2", nn::ReLU());
  seq->push_back("pool2", nn::MaxPool2d(2));
  seq->push_back("flatten", nn::Flatten());
  seq->push_back("fc1", nn::Linear(16 * 5 * 5, 120));
  seq->push_back("relu3", nn::ReLU());
  seq->push_back("fc2", nn::Linear(120, 84));
  seq->push_back("relu4", nn::ReLU());
  seq->push_back("fc3", nn::Linear(84, classes));
  return seq;
}

nn::Sequential psnet(int64_t classes) {
  // PSL.md's reference net: Conv(5x5, 1->40) -> Conv(5x5, 40->3C) -> SL(48C, C, 24) ->
  // SL(24C, C, 15) -> SL(15C, C, 1), sigmoid activations, 2x2 average pooling after each conv.
  // Tower t owns conv2 channels 3t..3t+2 (the 48 flattened features block t of sl1 reads) and
  // block t of every separable layer; conv1 is shared.
  nn::Sequential seq;
  seq->push_back("conv1", nn::Conv2d(nn::Conv2dOptions(1, 40, 5)));
  seq->push_back("sig1", nn::Sigmoid());
  seq->push_back("pool1", nn::AvgPool2d(2));
  seq->push_back("conv2", nn::Conv2d(nn::Conv2dOptions(40, 3 * classes, 5)));
  seq->push_back("sig2", nn::Sigmoid());
  seq->push_back("pool2", nn::AvgPool2d(2));
  seq->push_back("flatten", nn::Flatten());
  seq->push_back("sl1", SeparableLinear(48 * classes, classes, 24));
  seq->push_back("sig3", nn::Sigmoid());
  seq->push_back("sl2", SeparableLinear(24 * classes, classes, 15));
  seq->push_back("sig4", nn::Sigmoid());
  seq->push_back("sl3", SeparableLinear(15 * classes, classes, 1));
  return seq;
}

}  // namespace

SeparableLinearImpl::SeparableLinearImpl(int64_t in, int64_t blocks, int64_t out_per_block)
    : in_(in), blocks_(blocks), out_(out_per_block) {
  FEDRA_REQUIRE(blocks >= 1 && in % blocks == 0 && out_per_block >= 1,
                "separable layer: {} inputs do not split into {} blocks", in, blocks);
  // Each block initialised like nn::Linear(in / blocks, out): U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
  const double bound = 1.0 / std::sqrt(static_cast<double>(in / blocks));
  weight = register_parameter("weight", torch::empty({blocks, out_per_block, in / blocks}).uniform_(-bound, bound));
  bias = register_parameter("bias", torch::empty({blocks, out_per_block}).uniform_(-bound, bound));
}

at::Tensor SeparableLinearImpl::forward(const at::Tensor& x) {
  FEDRA_REQUIRE(x.dim() == 2 && x.size(1) == in_, "separable layer expects [batch, {}], got {}", in_,
                describe_tensor(x));
  // [B, N, in/N] x [N, k, in/N] -> [B, N, k]: block b sees only chunk b.
  const at::Tensor y = torch::einsum("bnc,nkc->bnk", {x.view({x.size(0), blocks_, in_ / blocks_}), weight}) + bias;
  return y.reshape({x.size(0), blocks_ * out_});
}

torch::nn::Sequential build_model(const std::string& spec_text, uint64_t seed) {
  // Seeding and drawing from torch's global generator must not interleave with another thread's
  // build: a process hosting virtual clients builds models on many threads at once.
  static std::mutex build_mutex;
  std::lock_guard<std::mutex> lock(build_mutex);
  torch::manual_seed(seed);
  return build_model_unseeded(spec_text);
}

torch::nn::Sequential layered_model(const std::string& spec, uint64_t seed, const Dataset* data) {
  return is_torchscript(spec) ? script_layers(spec, data) : build_model(spec, seed);
}

torch::nn::Sequential build_model_unseeded(const std::string& full_spec) {
  if (is_torchscript(full_spec)) {
    // cut= and head= matter to split learning only (split_model); every other use trains the whole
    // network: the script, or the chain of part files.
    const ScriptSpec s = parse_script_spec(full_spec);
    return s.parts() ? script_chain(full_spec).full : scripted_model(s.path);
  }
  const std::string spec_text = parse_model_spec(full_spec).network;
  const auto colon = spec_text.find(':');
  const std::string name = spec_text.substr(0, colon);
  if (name == "mlp") {
    FEDRA_REQUIRE(colon != std::string::npos, "model 'mlp' needs widths, e.g. mlp:784-200-200-10");
    return mlp(spec_text.substr(colon + 1), spec_text);
  }
  const Spec spec = parse_spec(spec_text, "model");
  spec.args.require_known({"classes"});
  const int64_t classes = spec.args.get_int("classes", 10);
  FEDRA_REQUIRE(classes >= 1, "model '{}': classes must be >= 1", spec_text);
  if (name == "cnn") return mcmahan_cnn(classes);
  if (name == "lenet5") return lenet5(classes);
  if (name == "psnet") return psnet(classes);
  FEDRA_FAIL("unknown model '{}'; use mlp:IN-H1-...-OUT, cnn, lenet5 or psnet", spec_text);
}

ModelSpec parse_model_spec(const std::string& text) {
  ModelSpec spec;
  const auto colon = text.find(':');
  if (colon == std::string::npos) {
    spec.network = text;
    return spec;
  }
  std::vector<std::string> kept;
  size_t at = colon + 1;
  while (at <= text.size()) {
    const size_t comma = text.find(',', at);
    const std::string item = text.substr(at, comma == std::string::npos ? std::string::npos : comma - at);
    if (item.rfind("cut=", 0) == 0) {
      spec.cut = item.substr(4);
      FEDRA_REQUIRE(!spec.cut.empty(), "model '{}': cut= needs a layer name, e.g. cut=pool1", text);
    } else if (item.rfind("head=", 0) == 0) {
      spec.head = item.substr(5);
      FEDRA_REQUIRE(!spec.head.empty(), "model '{}': head= needs a layer name, e.g. head=fc2", text);
    } else {
      kept.push_back(item);
    }
    if (comma == std::string::npos) break;
    at = comma + 1;
  }
  spec.network = text.substr(0, colon);
  if (!kept.empty()) spec.network += ":" + fmt::format("{}", fmt::join(kept, ","));
  return spec;
}

std::vector<std::string> layer_names(const torch::nn::Sequential& model) {
  std::vector<std::string> names;
  for (const auto& child : model->named_children()) names.push_back(child.key());
  return names;
}

SplitModel split_model(const std::string& spec_text, uint64_t seed, bool with_head) {
  SplitModel m;
  ModelSpec spec;
  if (is_torchscript(spec_text)) {
    ScriptChain chain = script_chain(spec_text);
    m.full = chain.full;
    spec.cut = chain.cut;
    spec.head = chain.head;
    spec.network = spec_text.substr(0, spec_text.find(','));
    FEDRA_REQUIRE(!with_head || !parse_script_spec(spec_text).parts() || !chain.head.empty(),
                  "model '{}': the U-shaped variant (split.labels=worker) needs the head as a third file, "
                  "torchscript:bottom=PATH,top=PATH,head=PATH", spec_text);
  } else {
    spec = parse_model_spec(spec_text);
    m.full = build_model(spec.network, seed);
  }
  const std::vector<std::string> names = layer_names(m.full);
  const std::string listing = fmt::format("{}", fmt::join(names, ", "));
  if (spec.cut.empty()) {
    // The hint: a cut right after the first layer with weights, in the spec's own syntax.
    size_t suggest = 0;
    const auto children = m.full->children();
    while (suggest + 1 < children.size() && children[suggest]->parameters().empty()) ++suggest;
    suggest = std::min(suggest + 1, names.size() - 1);
    FEDRA_FAIL("split learning needs a cut in the model spec, e.g. '{}{}cut={}' (the layers of '{}' are {})",
               spec.network, spec.network.find(':') == std::string::npos ? ":" : ",", names[suggest], spec.network,
               listing);
  }
  auto index_of = [&](const std::string& layer, const char* what) {
    const auto it = std::find(names.begin(), names.end(), layer);
    FEDRA_REQUIRE(it != names.end(), "model '{}': no layer '{}' for {}; its layers are {}", spec_text, layer,
                  what, listing);
    return static_cast<size_t>(it - names.begin());
  };
  const size_t cut = index_of(spec.cut, "cut=");
  size_t head = names.size();
  if (with_head) {
    if (!spec.head.empty()) {
      head = index_of(spec.head, "head=");
    } else {
      // The last layer with parameters, and what follows it.
      size_t i = 0, last = names.size();
      for (const auto& child : m.full->named_children()) {
        if (!child.value()->parameters().empty()) last = i;
        ++i;
      }
      head = last;
    }
  } else {
    FEDRA_REQUIRE(spec.head.empty(), "model '{}' names a head, which only the U-shaped variant "
                  "(split.labels=worker) uses", spec_text);
  }
  FEDRA_REQUIRE(cut + 1 < head,
                "model '{}': nothing is left above the cut after '{}'{} (layers: {})", spec_text,
                spec.cut, with_head ? fmt::format(" and below the head at '{}'", names[std::min(head, names.size() - 1)]) : "",
                listing);
  m.bottom = torch::nn::Sequential();
  m.top = torch::nn::Sequential();
  if (with_head) m.head = torch::nn::Sequential();
  size_t i = 0;
  for (const auto& any : *m.full) {
    torch::nn::Sequential& part = i <= cut ? m.bottom : (i < head ? m.top : m.head);
    part->push_back(names[i], any);
    ++i;
  }
  return m;
}


namespace {

struct SkipItem {
  std::string spec;  // a model spec, or linear:IN-OUT[:nobias]
  int64_t times = 1;
  int64_t linear_in = 0, linear_out = 0;  // linear items
  bool bias = true;
};

std::vector<SkipItem> parse_skip(const std::string& skip, const std::string& model_spec, const std::string& prefix) {
  std::vector<SkipItem> items;
  if (skip.empty()) return items;
  if (skip.find_first_not_of("0123456789") == std::string::npos) {
    items.push_back({model_spec, std::stoll(skip)});
    return items;
  }
  size_t at = 0;
  while (at < skip.size()) {
    const size_t space = skip.find(' ', at);
    const std::string item = skip.substr(at, space == std::string::npos ? std::string::npos : space - at);
    at = space == std::string::npos ? skip.size() : space + 1;
    if (item.empty()) continue;
    SkipItem s{item, 1};
    const auto star = item.rfind('*');
    if (star != std::string::npos) {
      const std::string count = item.substr(star + 1);
      FEDRA_REQUIRE(!count.empty() && count.find_first_not_of("0123456789") == std::string::npos,
                    "{}init_skip: '{}' should be SPEC or SPEC*COUNT", prefix, item);
      s.spec = item.substr(0, star);
      s.times = std::stoll(count);
    }
    if (s.spec.rfind("linear:", 0) == 0) {
      const std::string dims = s.spec.substr(7);
      int64_t in = 0, out = 0;
      char tail[16] = {0};
      const int n = std::sscanf(dims.c_str(), "%ld-%ld%15s", &in, &out, tail);
      FEDRA_REQUIRE((n == 2 || (n == 3 && std::string(tail) == ":nobias")) && in > 0 && out > 0,
                    "{}init_skip: '{}' should be linear:IN-OUT or linear:IN-OUT:nobias", prefix, s.spec);
      s.linear_in = in;
      s.linear_out = out;
      s.bias = n == 2;
    }
    items.push_back(s);
  }
  return items;
}

}  // namespace

void check_initial_model_options(const std::string& init, const std::string& skip, const std::string& prefix) {
  FEDRA_REQUIRE(init == "seed" || init == "after-data", "{}init must be seed or after-data, got '{}'", prefix, init);
  parse_skip(skip, "mlp:1-1", prefix);
  FEDRA_REQUIRE(skip.empty() || init == "after-data", "{}init_skip only applies with init=after-data", prefix);
}

torch::nn::Sequential build_initial_model(const std::string& spec, uint64_t seed, const std::string& init,
                                          const std::string& skip, const std::string& dataset) {
  check_initial_model_options(init, skip, "");
  if (init == "seed") return build_model(spec, seed);
  seed_like_synthetic(dataset);
  for (const SkipItem& item : parse_skip(skip, spec, "")) {
    for (int64_t k = 0; k < item.times; ++k) {
      if (item.linear_in > 0) {
        torch::nn::Linear discard(torch::nn::LinearOptions(item.linear_in, item.linear_out).bias(item.bias));
      } else {
        build_model_unseeded(item.spec);
      }
    }
  }
  return build_model_unseeded(spec);
}

void InitOptions::validate(const std::string& scope) const {
  check_initial_model_options(enum_name(init_), init_skip_, scope + ".");
}


}  // namespace fedra
