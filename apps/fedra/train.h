// `fedra train`: the whole model trained in one process, the centralised baseline.
#pragma once

#include <boost/program_options.hpp>

namespace fedra::cli {

int run_training(const boost::program_options::variables_map& vm);

}  // namespace fedra::cli
