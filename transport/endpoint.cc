#include "transport/endpoint.h"

#include <unistd.h>

#include <fmt/format.h>

#include "transport/error.h"

namespace fedra::transport {

std::string Endpoint::to_string() const {
  if (host.find(':') != std::string::npos) return fmt::format("[{}]:{}", host, port);
  return fmt::format("{}:{}", host, port);
}

Endpoint parse_endpoint(std::string_view text) {
  const auto colon = text.rfind(':');
  FEDRA_REQUIRE(colon != std::string_view::npos && colon > 0 && colon + 1 < text.size(),
                "'{}' is not an endpoint; expected HOST:PORT, e.g. 127.0.0.1:7000", text);
  std::string host(text.substr(0, colon));
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  const std::string port_text(text.substr(colon + 1));
  unsigned long port = 0;
  size_t used = 0;
  try {
    port = std::stoul(port_text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  FEDRA_REQUIRE(used == port_text.size() && port <= 65535,
                "'{}' in endpoint '{}' is not a port number (0-65535)", port_text, text);
  return Endpoint{host, static_cast<uint16_t>(port)};
}

std::string advertised_address(const std::string& advertise, const std::string& bound_address) {
  const auto bound = parse_endpoint(bound_address);
  std::string host = bound.host;
  uint16_t port = bound.port;
  if (!advertise.empty()) {
    const bool has_port = advertise.back() != ']' && advertise.find(':') != std::string::npos &&
                          advertise.find(':') == advertise.rfind(':');
    if (has_port || (advertise.front() == '[' && advertise.find("]:") != std::string::npos)) {
      const auto e = parse_endpoint(advertise);
      host = e.host;
      port = e.port;
    } else {
      host = advertise;
      if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
    }
  } else if (host.empty() || host == "0.0.0.0" || host == "::") {
    char name[256] = {};
    FEDRA_REQUIRE(::gethostname(name, sizeof(name) - 1) == 0,
                  "cannot read this machine's host name for --address-file: give --advertise HOST");
    host = name;
  }
  return host.find(':') != std::string::npos ? fmt::format("[{}]:{}", host, port) : fmt::format("{}:{}", host, port);
}

}  // namespace fedra::transport
