// `fedra train`: the whole model trained in one process, the centralised baseline.
#pragma once

#include <boost/program_options.hpp>

#include "core/system/stop.h"

namespace fedra::cli {

// SIGINT/SIGTERM (`stop`) end it after the current step, with the epoch so far recorded.
int run_training(const boost::program_options::variables_map& vm, const StopSignal& stop);

}  // namespace fedra::cli
