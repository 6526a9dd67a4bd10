#include "core/net/worker_links.h"

#include <spdlog/spdlog.h>

#include "transport/tcp/connection.h"
#include "transport/tcp/tls.h"

namespace fedra {

namespace tcp = transport::tcp;

std::unique_ptr<transport::Channel> connect_to_coordinator(const WorkerLinkConfig& config) {
  return tcp::BlockingChannel::connect(
      transport::parse_endpoint(config.coordinator), config.limits, config.connect_timeout,
      config.dump_frames_dir.empty() ? nullptr : std::make_shared<tcp::FrameDumper>(config.dump_frames_dir),
      config.tls);
}

std::unique_ptr<PeerHub> open_peer_port(const WorkerLinkConfig& config, const std::string& name,
                                        const transport::Channel& coordinator_link) {
  if (config.tls && (config.tls_cert.empty() || config.tls_key.empty())) {
    spdlog::debug("worker {}: no peer port (TLS without --tls-cert/--tls-key)", name);
    return nullptr;
  }
  PeerConfig pc;
  pc.listen = config.peer_listen;
  pc.advertise = config.advertise;
  pc.limits = config.limits;
  if (config.tls) {
    const tcp::TlsConfig own{config.tls_cert, config.tls_key, config.tls_ca, ""};
    pc.tls_server = std::make_shared<tcp::TlsContext>(tcp::TlsRole::kServer, own);
    pc.tls_client = std::make_shared<tcp::TlsContext>(tcp::TlsRole::kClient, own);
  }
  return std::make_unique<PeerHub>(name, std::move(pc), coordinator_link.local_host());
}

}  // namespace fedra
