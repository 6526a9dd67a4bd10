// Logging: spdlog, one line per event, on stderr: "[12:03:04.123] [coordinator] info: ...".
// init_logging() names the process in every line so that interleaved logs of a simulation stay
// readable; levels: trace, debug, info (default), warn, error.
#pragma once

#include <string>

namespace fedra {

void init_logging(const std::string& process_name, const std::string& level = "info");

}  // namespace fedra
