#include "core/system/log.h"

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include "core/kit/error.h"

namespace fedra {

void init_logging(const std::string& process_name, const std::string& level) {
  spdlog::drop(process_name);
  auto logger = spdlog::stderr_logger_st(process_name);
  logger->set_pattern("[%H:%M:%S.%e] [%n] %l: %v");
  const auto lvl = spdlog::level::from_str(level);
  FEDRA_REQUIRE(lvl != spdlog::level::off || level == "off",
                "unknown log level '{}'; use trace, debug, info, warn or error", level);
  logger->set_level(lvl);
  logger->flush_on(spdlog::level::trace);
  spdlog::set_default_logger(logger);
}

}  // namespace fedra
