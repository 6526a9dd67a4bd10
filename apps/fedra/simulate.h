// `fedra simulate`: a coordinator in this process and N `fedra worker` processes on loopback.
#pragma once

#include <boost/program_options.hpp>

#include "core/kit/registry.h"
#include "core/system/stop.h"

namespace fedra::cli {

int run_simulation(const boost::program_options::variables_map& vm, const StrategyRegistry& registry,
                   const std::string& log_level, std::shared_ptr<StopSignal> stop);

}  // namespace fedra::cli
