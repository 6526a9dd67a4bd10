#include "apps/fedra/export.h"

#include <filesystem>
#include <iostream>
#include <string>

#include <boost/program_options.hpp>
#include <fmt/format.h>

#include "core/kit/error.h"
#include "core/model/export.h"
#include "core/model/model.h"
#include "core/model/script_model.h"

namespace fedra::cli {

namespace po = boost::program_options;

int run_export(int argc, const char* const argv[]) {
  po::options_description opts("Options");
  opts.add_options()
      ("help,h", "show this help")
      ("checkpoint", po::value<std::string>(), "a run directory (its checkpoint/), a checkpoint directory or its state.json")
      ("out", po::value<std::string>()->default_value("model.pt"),
       "the TorchScript file to write (a model given as part files writes OUT's stem + .bottom.pt, .top.pt, .head.pt)")
      ("round", po::value<uint32_t>()->default_value(0), "the checkpoint of this round (kept by --checkpoint-keep); 0 = the latest")
      ("bin", po::value<std::string>(), "also write the weights as a model.bin-style frame here");
  po::positional_options_description positional;
  positional.add("checkpoint", 1);
  const std::string usage =
      "Usage: fedra export CHECKPOINT [--round N] [--out model.pt] [--bin model.bin]\n"
      "Writes the model of a run's latest checkpoint as TorchScript, the file a finished run\n"
      "leaves as model.pt: torch.jit.load reads it in Python (docs/outputs.md).\n\n";
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(argc, argv).options(opts).positional(positional).run(), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    std::cerr << "fedra export: " << e.what() << "; see `fedra export --help`\n";
    return 2;
  }
  if (vm.count("help")) {
    std::cout << usage << opts;
    return 0;
  }
  if (!vm.count("checkpoint")) {
    std::cerr << "fedra export: name the checkpoint, e.g. `fedra export runs/exp1 --out model.pt`\n";
    return 2;
  }
  const ExportedModel m = model_from_checkpoint(vm["checkpoint"].as<std::string>(), vm["round"].as<uint32_t>());
  const std::string out = vm["out"].as<std::string>();
  save_scripted(m.model, out);
  if (vm.count("bin")) save_model_file(vm["bin"].as<std::string>(), model_state(*m.model));
  std::cout << fmt::format("wrote {} (round {} of a {} run, model '{}', {} weights)\n", out, m.round, m.strategy,
                           m.spec, count_parameters(*m.model));
  return 0;
}

}  // namespace fedra::cli
