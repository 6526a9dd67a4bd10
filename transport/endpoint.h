// Endpoints: "HOST:PORT" as users write them ("[::1]:PORT" for IPv6), whatever carries the bytes.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace fedra::transport {

struct Endpoint {
  std::string host;
  uint16_t port = 0;
  std::string to_string() const;
};

// Parses "HOST:PORT" ("[::1]:PORT" for IPv6). Throws Error naming the bad text.
Endpoint parse_endpoint(std::string_view text);

// What the coordinator writes with --address-file: `advertise` (HOST or HOST:PORT) if given,
// else the --listen host unless it is a wildcard (0.0.0.0, ::, empty), else this machine's host
// name; the port is the bound one unless `advertise` names one.
std::string advertised_address(const std::string& advertise, const std::string& bound_address);

}  // namespace fedra::transport
