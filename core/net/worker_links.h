// A worker's links over TCP (with TLS when the coordinator asks for it): the channel to its
// coordinator, and the peer port other workers link to (core/net/peer.h). The worker's runtime
// (core/runtime/worker.h) reaches the network only through these two, and through the
// transport::Channel interface the first returns.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "core/net/peer.h"
#include "transport/channel.h"

namespace fedra {

namespace transport::tcp {
class TlsContext;
}

struct WorkerLinkConfig {
  std::string coordinator;  // HOST:PORT
  transport::Limits limits;
  std::chrono::milliseconds connect_timeout{60000};
  std::string dump_frames_dir;  // if set, every frame is written there (docs/protocol.md)
  // TLS in the client role (transport/tcp/tls.h); null: plain TCP.
  std::shared_ptr<transport::tcp::TlsContext> tls;
  // The peer port: where it listens (empty: the local address of the coordinator link, any
  // port), the HOST[:PORT] it tells the others, and with TLS the worker's certificate, key and CA.
  std::string peer_listen, advertise;
  std::string tls_cert, tls_key, tls_ca;
};

// Connects with retry and backoff until config.connect_timeout (then throws Error naming the
// address and what to check).
std::unique_ptr<transport::Channel> connect_to_coordinator(const WorkerLinkConfig& config);

// The worker's peer port, listening from now on; null (and a debug line) when it cannot have
// one: TLS to the coordinator without a certificate of its own (--tls-cert, --tls-key).
// `coordinator_link` is the channel connect_to_coordinator returned: its local address is the
// default place to listen.
std::unique_ptr<PeerHub> open_peer_port(const WorkerLinkConfig& config, const std::string& name,
                                        const transport::Channel& coordinator_link);

}  // namespace fedra
