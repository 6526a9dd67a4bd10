#include "core/data/dataset.h"

#include <zlib.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <fmt/ranges.h>
#include <torch/csrc/jit/serialization/pickle.h>

#include "core/data/tensor_checks.h"
#include "core/kit/options.h"

namespace fedra {

namespace {

// A spec's limit or test_limit: how many examples to keep, 0 for all.
int64_t limit_arg(const OptionMap& a, const char* name) {
  const int64_t v = a.get_int(name, 0);
  FEDRA_REQUIRE(v >= 0, "{}: {} must be >= 0 (0: every example), got {}", a.scope(), name, v);
  return v;
}

constexpr const char* kFmnistDir = "/usr/share/datasets/fashion-mnist";
// Mean and standard deviation of the Fashion-MNIST training pixels scaled to [0,1].
constexpr double kFmnistMean = 0.2860;
constexpr double kFmnistStd = 0.3530;

// Reads a whole file, gunzipping it if it is gzip (zlib reads plain files unchanged).
std::vector<uint8_t> read_maybe_gzip(const std::string& path) {
  FEDRA_REQUIRE(std::filesystem::exists(path), "data file '{}' does not exist", path);
  gzFile f = gzopen(path.c_str(), "rb");
  FEDRA_REQUIRE(f != nullptr, "cannot open data file '{}': {}", path, std::strerror(errno));
  std::vector<uint8_t> out;
  std::vector<uint8_t> buf(1 << 20);
  for (;;) {
    const int n = gzread(f, buf.data(), static_cast<unsigned>(buf.size()));
    if (n < 0) {
      int err = 0;
      std::string msg = gzerror(f, &err);
      gzclose(f);
      FEDRA_FAIL("cannot read '{}': {} (is the file complete?)", path, msg);
    }
    if (n == 0) break;
    out.insert(out.end(), buf.begin(), buf.begin() + n);
  }
  gzclose(f);
  return out;
}

uint32_t be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}

// IDX: two zero bytes, a type code (0x08 = uint8), the number of dimensions, big-endian sizes.
at::Tensor read_idx_uint8(const std::string& path) {
  auto bytes = read_maybe_gzip(path);
  FEDRA_REQUIRE(bytes.size() >= 4 && bytes[0] == 0 && bytes[1] == 0,
                "'{}' is not an IDX file (bad magic number)", path);
  FEDRA_REQUIRE(bytes[2] == 0x08, "'{}': IDX element type 0x{:02x} is not supported (only "
                "unsigned bytes, 0x08)", path, bytes[2]);
  const int dims = bytes[3];
  FEDRA_REQUIRE(dims >= 1 && dims <= 4 && bytes.size() >= 4 + 4u * dims,
                "'{}': bad IDX header ({} dimensions)", path, dims);
  std::vector<int64_t> shape;
  uint64_t count = 1;
  for (int d = 0; d < dims; ++d) {
    shape.push_back(be32(bytes.data() + 4 + 4 * d));
    count *= static_cast<uint64_t>(shape.back());
  }
  const size_t offset = 4 + 4u * dims;
  FEDRA_REQUIRE(bytes.size() - offset == count, "'{}': IDX header says {} values, file holds {}",
                path, count, bytes.size() - offset);
  at::Tensor t = at::empty(shape, at::kByte);
  std::memcpy(t.data_ptr(), bytes.data() + offset, count);
  return t;
}

at::Tensor head(const at::Tensor& t, int64_t limit) {
  return limit > 0 && limit < t.size(0) ? t.slice(0, 0, limit).contiguous() : t;
}

Dataset idx_split(const std::string& name, const std::string& images_path,
                  const std::string& labels_path, int64_t limit, bool fmnist_norm) {
  at::Tensor images = read_idx_uint8(images_path);
  at::Tensor labels = read_idx_uint8(labels_path);
  FEDRA_REQUIRE(images.size(0) == labels.size(0), "'{}' has {} images but '{}' has {} labels",
                images_path, images.size(0), labels_path, labels.size(0));
  Dataset d;
  d.name = name;
  at::Tensor x = images.to(at::kFloat).div_(255.0);
  if (x.dim() == 3) x = x.unsqueeze(1);  // [N,H,W] -> [N,1,H,W]
  if (fmnist_norm) x.sub_(kFmnistMean).div_(kFmnistStd);
  d.inputs = head(x, limit);
  d.targets = head(labels.to(at::kLong).reshape({-1}), limit);
  return d;
}

void set_classes(DatasetSplits& s) {
  int64_t c = 0;
  for (const Dataset* d : {&s.train, &s.test}) {
    if (d->size() > 0 && !d->real_targets()) {
      c = std::max(c, d->targets.max().item<int64_t>() + 1);
    }
  }
  s.train.num_classes = s.test.num_classes = c;
}

DatasetSplits load_fmnist(const OptionMap& a, bool train, bool test) {
  a.require_known({"dir", "limit", "test_limit"});
  const std::string dir = a.get_string("dir", kFmnistDir);
  FEDRA_REQUIRE(std::filesystem::exists(dir + "/train-images-idx3-ubyte.gz"),
                "Fashion-MNIST not found in '{}'; install Debian's dataset-fashion-mnist "
                "(scripts/setup.sh does) or pass fmnist:dir=PATH",
                dir);
  DatasetSplits s;
  if (train) {
    s.train = idx_split("fmnist", dir + "/train-images-idx3-ubyte.gz",
                        dir + "/train-labels-idx1-ubyte.gz", limit_arg(a, "limit"), true);
  }
  if (test) {
    s.test = idx_split("fmnist", dir + "/t10k-images-idx3-ubyte.gz",
                       dir + "/t10k-labels-idx1-ubyte.gz", limit_arg(a, "test_limit"), true);
  }
  s.train.num_classes = s.test.num_classes = 10;
  return s;
}

DatasetSplits load_idx(const OptionMap& a, bool train, bool test) {
  a.require_known({"train_images", "train_labels", "test_images", "test_labels", "limit",
                   "test_limit"});
  FEDRA_REQUIRE(a.has("train_images") && a.has("train_labels"),
                "idx dataset needs train_images=PATH,train_labels=PATH");
  DatasetSplits s;
  if (train) {
    s.train = idx_split("idx", a.get_string("train_images", ""), a.get_string("train_labels", ""),
                        limit_arg(a, "limit"), false);
  }
  if (test && (a.has("test_images") || a.has("test_labels"))) {
    FEDRA_REQUIRE(a.has("test_images") && a.has("test_labels"),
                  "idx dataset: give both test_images and test_labels, or neither");
    s.test = idx_split("idx", a.get_string("test_images", ""), a.get_string("test_labels", ""),
                       limit_arg(a, "test_limit"), false);
  }
  set_classes(s);
  return s;
}

Dataset read_csv(const std::string& path, int64_t label_col, const std::string& header,
                 char sep, bool float_target, int64_t limit) {
  std::ifstream in(path);
  FEDRA_REQUIRE(in.good(), "cannot open CSV file '{}'", path);
  std::vector<float> values;
  std::vector<double> labels;
  int64_t width = -1;
  std::string line;
  int64_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    std::vector<std::string> cells;
    std::stringstream ss(line);
    std::string cell;
    while (std::getline(ss, cell, sep)) cells.push_back(cell);
    std::vector<double> row;
    bool numeric = true;
    for (const auto& c : cells) {
      char* end = nullptr;
      const double v = std::strtod(c.c_str(), &end);
      if (c.empty() || end != c.c_str() + c.size()) numeric = false;
      row.push_back(v);
    }
    if (line_no == 1 && (header == "true" || (header == "auto" && !numeric))) continue;
    FEDRA_REQUIRE(numeric, "'{}' line {}: not all cells are numbers", path, line_no);
    if (width < 0) width = static_cast<int64_t>(row.size());
    FEDRA_REQUIRE(static_cast<int64_t>(row.size()) == width && width >= 2,
                  "'{}' line {}: {} columns, expected {} (at least a label and one feature)",
                  path, line_no, row.size(), width);
    const int64_t lc = label_col < 0 ? width + label_col : label_col;
    FEDRA_REQUIRE(lc >= 0 && lc < width, "'{}': label column {} out of range (0..{})", path,
                  label_col, width - 1);
    const double lab = row[static_cast<size_t>(lc)];
    FEDRA_REQUIRE(float_target || (lab >= 0 && lab == static_cast<double>(static_cast<int64_t>(lab))),
                  "'{}' line {}: label {} is not a class index (0, 1, 2, ...); for regression targets add "
                  "target=float to the csv spec", path, line_no, lab);
    FEDRA_REQUIRE(std::isfinite(lab), "'{}' line {}: the target is {}", path, line_no, lab);
    labels.push_back(lab);
    for (int64_t i = 0; i < width; ++i) {
      if (i != lc) values.push_back(static_cast<float>(row[static_cast<size_t>(i)]));
    }
    if (limit > 0 && static_cast<int64_t>(labels.size()) >= limit) break;
  }
  FEDRA_REQUIRE(!labels.empty(), "CSV file '{}' has no examples", path);
  Dataset d;
  d.name = "csv";
  const auto n = static_cast<int64_t>(labels.size());
  d.inputs = at::from_blob(values.data(), {n, width - 1}, at::kFloat).clone();
  d.targets = at::from_blob(labels.data(), {n}, at::kDouble).to(float_target ? at::kFloat : at::kLong);
  return d;
}

DatasetSplits load_csv(const OptionMap& a, bool train, bool test) {
  a.require_known({"train", "test", "label", "target", "header", "sep", "limit", "test_limit"});
  const std::string target = a.get_string("target", "class");
  FEDRA_REQUIRE(target == "class" || target == "float", "csv target must be class or float, not '{}'", target);
  const bool float_target = target == "float";
  FEDRA_REQUIRE(a.has("train"), "csv dataset needs train=PATH");
  const std::string sep_name = a.get_string("sep", "comma");
  char sep = ',';
  if (sep_name == "semicolon") sep = ';';
  else if (sep_name == "tab") sep = '\t';
  else FEDRA_REQUIRE(sep_name == "comma", "csv sep must be comma, semicolon or tab, not '{}'", sep_name);
  const std::string header = a.get_string("header", "auto");
  FEDRA_REQUIRE(header == "auto" || header == "true" || header == "false",
                "csv header must be auto, true or false, not '{}'", header);
  const int64_t label = a.get_int("label", 0);
  DatasetSplits s;
  if (train) s.train = read_csv(a.get_string("train", ""), label, header, sep, float_target, limit_arg(a, "limit"));
  if (test && a.has("test")) {
    s.test = read_csv(a.get_string("test", ""), label, header, sep, float_target, limit_arg(a, "test_limit"));
    FEDRA_REQUIRE(!train || s.test.inputs.size(1) == s.train.inputs.size(1),
                  "csv test file has {} features, the training file {}", s.test.inputs.size(1),
                  s.train.inputs.size(1));
  }
  set_classes(s);
  return s;
}

// A file of torch.save({'x': X, 'y': Y}, PATH), read with LibTorch's own unpickler.
Dataset read_tensors(const std::string& path, const std::string& xkey, const std::string& ykey, int64_t limit) {
  FEDRA_REQUIRE(std::filesystem::is_regular_file(path),
                "tensors file '{}' does not exist (write it in Python with torch.save({{'{}': X, '{}': Y}}, PATH))", path,
                xkey, ykey);
  std::ifstream in(path, std::ios::binary);
  const std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  c10::IValue value;
  try {
    value = torch::pickle_load(bytes);
  } catch (const std::exception& e) {
    FEDRA_FAIL("cannot read '{}' as a torch.save file: {}", path, torch_error_reason(e));
  }
  FEDRA_REQUIRE(value.isGenericDict(), "'{}' holds a {}, not a dict {{'{}': X, '{}': Y}}", path, value.tagKind(), xkey,
                ykey);
  const auto dict = value.toGenericDict();
  auto get = [&](const std::string& key) {
    std::vector<std::string> keys;
    for (const auto& e : dict) {
      if (!e.key().isString()) continue;
      keys.push_back(e.key().toStringRef());
      if (e.key().toStringRef() == key) {
        FEDRA_REQUIRE(e.value().isTensor(), "'{}': '{}' is a {}, not a tensor", path, key, e.value().tagKind());
        return e.value().toTensor();
      }
    }
    FEDRA_FAIL("'{}' has no tensor '{}' (its keys: {}; name them with x= and y=)", path, key, fmt::join(keys, ", "));
  };
  at::Tensor x = get(xkey), y = get(ykey);
  FEDRA_REQUIRE(x.dim() >= 1 && x.size(0) > 0, "'{}': '{}' is {}, not one example per row", path, xkey,
                describe_tensor(x));
  if (y.dim() == 2 && y.size(1) == 1) y = y.reshape({-1});
  const bool real = at::isFloatingType(y.scalar_type());  // regression or multi-label targets
  FEDRA_REQUIRE(!at::isComplexType(y.scalar_type()), "'{}': '{}' is {}, not numbers", path, ykey, describe_tensor(y));
  FEDRA_REQUIRE((y.dim() == 1 || (real && y.dim() == 2)) && y.size(0) == x.size(0),
                "'{}': '{}' is {} for {} examples in '{}' (class labels are [N] integers; float targets [N] or "
                "[N, K])", path, ykey, describe_tensor(y), x.size(0), xkey);
  FEDRA_REQUIRE(at::isFloatingType(x.scalar_type()) || at::isIntegralType(x.scalar_type(), /*includeBool=*/true),
                "'{}': '{}' is {}, not numbers", path, xkey, describe_tensor(x));
  Dataset d;
  d.name = path;
  d.inputs = head(x.to(at::kFloat).contiguous(), limit);
  if (real) {
    d.targets = head(y.to(at::kFloat).contiguous(), limit);
    FEDRA_REQUIRE(d.targets.isfinite().all().item<bool>(), "'{}': '{}' holds NaN or infinite targets", path, ykey);
  } else {
    d.targets = head(y.to(at::kLong).contiguous(), limit);
    FEDRA_REQUIRE(d.targets.min().item<int64_t>() >= 0, "'{}': '{}' has negative class labels", path, ykey);
  }
  return d;
}

DatasetSplits load_tensors(const OptionMap& a, bool train, bool test) {
  a.require_known({"train", "test", "x", "y", "limit", "test_limit"});
  FEDRA_REQUIRE(a.has("train"), "tensors dataset needs a file: tensors:PATH or tensors:train=PATH[,test=PATH]");
  const std::string x = a.get_string("x", "x"), y = a.get_string("y", "y");
  DatasetSplits s;
  if (train) s.train = read_tensors(a.get_string("train", ""), x, y, limit_arg(a, "limit"));
  if (test && a.has("test")) {
    s.test = read_tensors(a.get_string("test", ""), x, y, limit_arg(a, "test_limit"));
    FEDRA_REQUIRE(!train || s.test.inputs.sizes().slice(1) == s.train.inputs.sizes().slice(1),
                  "the test file's examples are {}, the training file's {}", describe_tensor(s.test.inputs[0]),
                  describe_tensor(s.train.inputs[0]));
  }
  set_classes(s);
  return s;
}

Dataset synthetic_split(int64_t n, int64_t features, int64_t classes, uint64_t seed) {
  // One generator for x then y, in the notebook's order, so the values equal Python's
  // torch.manual_seed(seed); x = rand([n, features]); y = randint(0, classes, [n, 1]).
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  Dataset d;
  d.name = "synthetic";
  d.inputs = at::rand({n, features}, gen);
  d.targets = at::randint(0, classes, {n, 1}, gen, at::kFloat).to(at::kLong).reshape({n});
  d.num_classes = classes;
  return d;
}

DatasetSplits load_synthetic(const OptionMap& a) {
  a.require_known({"n", "features", "classes", "seed", "test_n"});
  const int64_t n = a.get_int("n", 320);
  const int64_t features = a.get_int("features", 16);
  const int64_t classes = a.get_int("classes", 2);
  const auto seed = static_cast<uint64_t>(a.get_int("seed", 40));
  const int64_t test_n = a.get_int("test_n", 0);
  FEDRA_REQUIRE(n > 0 && features > 0 && classes >= 2 && test_n >= 0,
                "synthetic dataset needs n > 0, features > 0, classes >= 2, test_n >= 0");
  DatasetSplits s;
  s.train = synthetic_split(n, features, classes, seed);
  s.test = test_n > 0 ? synthetic_split(test_n, features, classes, seed + 1) : s.train;
  return s;
}

}  // namespace

namespace {

// tensors:PATH[,...] is tensors:train=PATH[,...]
std::string canonical_spec(const std::string& given) {
  if (given.rfind("tensors:", 0) != 0) return given;
  const std::string first =
      given.substr(8, given.find(',') == std::string::npos ? std::string::npos : given.find(',') - 8);
  return first.find('=') == std::string::npos ? "tensors:train=" + given.substr(8) : given;
}

}  // namespace

void check_dataset_spec(const std::string& given) {
  const Spec spec = parse_spec(canonical_spec(given), "dataset");
  for (const char* name : {"limit", "test_limit"}) {
    if (spec.args.has(name)) limit_arg(spec.args, name);
  }
}

DatasetSplits load_dataset(const std::string& given, Splits which) {
  FEDRA_REQUIRE(given.find("{client}") == std::string::npos,
                "dataset '{}' has a {{client}} placeholder (one file per worker): only workers read it; give the "
                "coordinator's evaluation data with --test-data (or none)", given);
  const Spec spec = parse_spec(canonical_spec(given), "dataset");
  const bool train = which != Splits::kTest;
  const bool test = which != Splits::kTrain;
  DatasetSplits s;
  if (spec.name == "fmnist") s = load_fmnist(spec.args, train, test);
  else if (spec.name == "idx") s = load_idx(spec.args, train, test);
  else if (spec.name == "csv") s = load_csv(spec.args, train, test);
  else if (spec.name == "tensors") s = load_tensors(spec.args, train, test);
  else if (spec.name == "synthetic") s = load_synthetic(spec.args);  // generated, not read
  else FEDRA_FAIL("unknown dataset '{}'; use fmnist, idx:..., csv:..., tensors:... or synthetic:...", spec.name);
  if (train) FEDRA_REQUIRE(s.train.size() > 0, "dataset '{}' has no training examples", given);
  if (!train) s.train = Dataset();
  if (!test) s.test = Dataset();
  return s;
}

void seed_like_synthetic(const std::string& spec_text) {
  const Spec spec = parse_spec(spec_text, "dataset");
  FEDRA_REQUIRE(spec.name == "synthetic", "initialising the model after the data's draws needs the "
                "synthetic dataset (generated from torch's generator), not '{}'", spec_text);
  const int64_t n = spec.args.get_int("n", 320);
  const int64_t features = spec.args.get_int("features", 16);
  const int64_t classes = spec.args.get_int("classes", 2);
  at::manual_seed(static_cast<uint64_t>(spec.args.get_int("seed", 40)));
  (void)at::rand({n, features});
  (void)at::randint(0, classes, {n, 1}, at::kFloat);
}

Dataset subset(const Dataset& data, const std::vector<int64_t>& indices) {
  Dataset d;
  d.name = data.name;
  d.num_classes = data.num_classes;
  at::Tensor idx = at::tensor(indices, at::kLong);
  d.inputs = data.inputs.index_select(0, idx);
  d.targets = data.targets.index_select(0, idx);
  return d;
}

std::pair<Dataset, Dataset> holdout_split(const Dataset& data, double fraction, uint64_t seed) {
  FEDRA_REQUIRE(fraction >= 0 && fraction < 1, "--holdout must be in [0, 1), got {}", fraction);
  const int64_t n = data.size();
  const auto held = static_cast<int64_t>(std::llround(fraction * static_cast<double>(n)));
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const at::Tensor perm = at::randperm(n, gen, at::kLong);
  std::vector<char> out(static_cast<size_t>(n), 0);
  const int64_t* p = perm.data_ptr<int64_t>();
  for (int64_t i = 0; i < held; ++i) out[static_cast<size_t>(p[i])] = 1;
  std::vector<int64_t> train_idx, held_idx;
  for (int64_t i = 0; i < n; ++i) (out[static_cast<size_t>(i)] ? held_idx : train_idx).push_back(i);
  return {subset(data, train_idx), subset(data, held_idx)};
}

std::vector<int64_t> label_histogram(const Dataset& data) {
  std::vector<int64_t> h(static_cast<size_t>(std::max<int64_t>(data.num_classes, 0)), 0);
  if (data.size() == 0 || data.real_targets()) return h;
  at::Tensor counts = at::bincount(data.targets, {}, data.num_classes);
  for (int64_t c = 0; c < counts.size(0) && c < static_cast<int64_t>(h.size()); ++c) {
    h[static_cast<size_t>(c)] = counts[c].item<int64_t>();
  }
  return h;
}

}  // namespace fedra
