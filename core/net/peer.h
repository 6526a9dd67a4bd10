// Worker-to-worker links: a worker's peer port, the rings built on it, and the ring all-reduce.
//
// Every worker process (each virtual client) listens on a *peer port* and reports where it is
// reached in its hello ("peer_address": --advertise HOST:PORT, or the listening address; by
// default the local address of its coordinator link, port picked by the kernel). A strategy that
// wants direct links gets the members' addresses from its coordinator half (in its run request)
// and asks the PeerHub for a ring: this worker connects to the next rank and accepts the previous
// rank's connection. Nobody outside the job joins: a connecting worker's first frame is a
// "peer.hello" carrying the job's peer key (a random 128-bit secret the coordinator hands every
// worker in its welcome, compared in constant time), its name and the ring's session; the
// accepting side answers "peer.welcome" or an error and hangs up, and logs the refusal. With TLS on
// the coordinator link, peer links are mutual TLS with the same CA: the accepting worker presents
// its --tls-cert and asks for the connecting worker's, and the connecting worker checks that the
// certificate it is shown carries the peer's worker name (`fedra certs` puts it in the
// subjectAltName).
//
// Threading: like every connection in Fedra, single-threaded. The hub owns an io_context that runs
// only inside its own calls (ring setup, RingAllReduce::progress/finish), on the worker's thread;
// between calls incoming bytes wait in the kernel. A connection arriving while nothing runs is
// handled at the next call.
//
// Failures: every wait has a deadline. A peer that cannot be reached fails the call with both
// names and the address; a peer link that closes mid-ring fails the ring, and the ring closes its
// own links at once, so the failure travels around the ring in milliseconds instead of each
// member waiting for its timeout.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "core/loops/cohort.h"

#include "transport/codec.h"

namespace asio {
class io_context;
}

namespace fedra {

namespace transport::tcp {
class Connection;
class Listener;
class TlsContext;
}  // namespace transport::tcp

namespace peer {
inline constexpr const char* kHello = "peer.hello";
inline constexpr const char* kWelcome = "peer.welcome";
inline constexpr const char* kChunk = "ring.chunk";
}  // namespace peer

struct PeerConfig {
  // HOST:PORT to listen on; empty: the local address of the coordinator link, port 0.
  std::string listen;
  // HOST or HOST:PORT other workers connect to (NAT, containers); empty: the listening address.
  std::string advertise;
  // Both set or both null: TLS for peer links (the server context asks for a client certificate).
  std::shared_ptr<transport::tcp::TlsContext> tls_server;
  std::shared_ptr<transport::tcp::TlsContext> tls_client;
  transport::Limits limits;
};

struct PeerAddress {
  std::string name;
  std::string address;  // HOST:PORT
};

// "name=host:port,name=host:port" and back: how a run request carries a ring's members.
std::string format_peers(const std::vector<PeerAddress>& peers);
std::vector<PeerAddress> parse_peers(const std::string& text);

// A coordinator's first ring session: microseconds since the epoch, so sessions keep rising
// across a restarted coordinator (a worker's hub refuses hellos for sessions older than its
// newest). The coordinator adds one per ring it asks for.
uint64_t first_peer_session();

class PeerHub;
struct PeerLink;  // an accepted connection (peer.cc)

// One worker's place in a ring: the link to the next rank (it connected) and from the previous
// rank (it accepted). Both links carry frames both ways: frames from the previous rank go to the
// handler set by on_frame(), frames the next rank sends back to the one set by on_frame_from_next().
// A chain (PeerHub::ring with closed = false, pipeline stages) is a ring without the link from
// the last rank to the first: rank 0 has no previous rank and the last rank no next one.
class PeerRing {
 public:
  using Handler = std::function<void(transport::Envelope&&)>;
  PeerRing(PeerHub& hub, std::vector<PeerAddress> members, size_t rank, uint64_t session, bool closed = true);
  ~PeerRing();
  PeerRing(const PeerRing&) = delete;
  PeerRing& operator=(const PeerRing&) = delete;

  size_t rank() const { return rank_; }
  size_t size() const { return members_.size(); }
  bool has_next() const { return members_.size() > 1 && (closed_ || rank_ + 1 < members_.size()); }
  bool has_prev() const { return members_.size() > 1 && (closed_ || rank_ > 0); }
  const PeerAddress& next() const { return members_[(rank_ + 1) % members_.size()]; }
  const PeerAddress& prev() const { return members_[(rank_ + members_.size() - 1) % members_.size()]; }

  // Sends to the next rank; `on_written` runs (inside progress/wait) once the kernel has the frame.
  void send(const transport::Envelope& envelope, std::function<void()> on_written = {});
  // Sends back to the previous rank, over the link it opened.
  void send_prev(const transport::Envelope& envelope, std::function<void()> on_written = {});
  void on_frame(Handler handler);
  void on_frame_from_next(Handler handler);
  // Runs ready handlers without blocking. Throws if the ring failed.
  void progress();
  // Runs handlers until `done()` or the deadline (then throws kOverloaded naming `what`).
  void wait(const std::function<bool()>& done, std::chrono::steady_clock::time_point deadline,
            const std::string& what);
  // Closes both links now (a failed step): the neighbours notice at once.
  void abort(const std::string& reason);
  // Marks the ring failed (a bad frame, a closed link): the next progress/wait throws `reason`.
  void fail(const std::string& reason);
  // Bytes this worker sent to / received from its neighbours over this ring (both links).
  uint64_t bytes_sent() const;
  uint64_t bytes_received() const;
  // "worker-0 -> worker-1 -> worker-2" around this member, for messages.
  std::string describe() const;

 private:
  friend class PeerHub;
  [[noreturn]] void throw_failed() const;

  PeerHub& hub_;
  std::vector<PeerAddress> members_;
  size_t rank_;
  uint64_t session_;
  bool closed_;
  std::shared_ptr<transport::tcp::Connection> out_, in_;
  std::shared_ptr<PeerLink> in_link_;
  Handler handler_, next_handler_;
  std::deque<transport::Envelope> early_;       // frames that arrived before on_frame()
  std::deque<transport::Envelope> early_next_;  // and before on_frame_from_next()
  std::optional<std::string> failed_;
};

class PeerHub {
 public:
  // Starts listening. `name` is this worker's; `coordinator_local_host` is the local address of
  // its coordinator link (the default listening host). Throws Error naming the address.
  PeerHub(std::string name, PeerConfig config, const std::string& coordinator_local_host);
  ~PeerHub();
  PeerHub(const PeerHub&) = delete;
  PeerHub& operator=(const PeerHub&) = delete;

  const std::string& name() const { return name_; }
  // HOST:PORT for the hello.
  const std::string& address() const { return advertised_; }
  // The job's peer key (from the welcome); connections are refused until it is set.
  void set_key(std::string key) { key_ = std::move(key); }

  // Connects this worker (members[rank]) into a ring for `session` (the same number on every
  // member: the strategy's request) within `timeout`; closed = false makes a chain (no link from
  // the last member to the first). Throws Error naming this worker, the peer and its address when
  // a link cannot be made (refused, wrong certificate, timeout).
  std::unique_ptr<PeerRing> ring(const std::vector<PeerAddress>& members, size_t rank, uint64_t session,
                                 std::chrono::milliseconds timeout, bool closed = true);

  // Connections refused since the start (outsiders, wrong key or certificate, stale sessions).
  uint64_t refused() const { return refused_; }
  asio::io_context& io();

 private:
  friend class PeerRing;
  void accept(std::shared_ptr<transport::tcp::Connection> conn);
  void refuse(const std::shared_ptr<PeerLink>& p, const std::string& why);
  void forget(const PeerLink* p);
  // ring()'s steps (peer.cc).
  struct Dial;  // the link to the next member while it forms
  void close_older_links(std::chrono::milliseconds timeout);
  void tell_linked(uint64_t session, bool closed, const std::string& why);
  std::shared_ptr<transport::tcp::Connection> dial(const PeerAddress& next, uint64_t session,
                                                   std::chrono::milliseconds timeout, const std::shared_ptr<Dial>& st);
  std::shared_ptr<PeerLink> accepted_link(const std::string& from, uint64_t session);
  void hand_over(PeerRing& ring, std::shared_ptr<transport::tcp::Connection> out, Dial& st,
                 std::shared_ptr<PeerLink> in);

  std::string name_;
  PeerConfig config_;
  std::unique_ptr<asio::io_context> io_;
  std::unique_ptr<transport::tcp::Listener> listener_;
  std::string advertised_;
  std::string key_;
  uint64_t refused_ = 0;
  // Accepted connections: waiting for their hello, or said hello for a ring not yet asked for.
  std::vector<std::shared_ptr<PeerLink>> pending_;
  uint64_t session_ = 0;  // the newest ring asked for; hellos for older sessions are refused
};

struct Message;

// The worker side of ask_to_link(): nullptr when `request` asks for no links;
// else this worker's place (rank `rank` of `world`) in the ring, or chain (closed = false), that
// its options name, formed through `hub` within `timeout`. Throws naming `worker` when it has no
// peer port (hub null) or the request lists another number of members.
std::unique_ptr<PeerRing> join_links(const Message& request, PeerHub* hub, const std::string& worker, size_t rank,
                                     size_t world, std::chrono::milliseconds timeout, bool closed = true);

// Ring all-reduce (sum) over a PeerRing, bucket by bucket: each bucket is a contiguous 1-D float
// tensor reduced in place. A bucket is cut into `size` chunks; reduce-scatter passes partial sums
// of one chunk per phase to the next rank (n - 1 phases; the receiver adds each in place as its
// frame arrives), then all-gather passes the finished chunks on (n - 1 phases). Buckets are
// independent: one can be in its all-gather while the next is still being produced by backward,
// so the exchange overlaps computation and buckets pipeline on the wire. Frames carry the step,
// bucket and phase; a frame for a bucket (or step) this worker has not started yet waits for it.
// Each received chunk is checked (size, dtype, finiteness) before it is summed.
class RingAllReduce {
 public:
  RingAllReduce(PeerRing& ring, size_t buckets);
  void begin_step(uint64_t step);
  // Starts reducing bucket `b` of the current step; `flat` must stay alive and unmodified until
  // finish() returns, and then holds the sum over the ring.
  void start(size_t b, at::Tensor flat);
  // Moves started buckets along without blocking (call from backward hooks).
  void progress();
  // Waits until every bucket of the step is reduced and sent on; throws on a peer failure or
  // when `timeout` passes.
  void finish(std::chrono::milliseconds timeout);
  // After finish(): bucket b's sum as `size` consecutive chunks ([offset, offset + numel) of
  // the flat tensor). This rank's own chunk lives in the flat tensor; the others are the frames
  // the all-gather brought, used where they arrived (no copy into the flat tensor, which
  // therefore does not hold the whole sum).
  struct Chunk {
    int64_t offset = 0;
    at::Tensor values;
  };
  std::vector<Chunk> result(size_t b) const;

 private:
  struct Bucket {
    at::Tensor flat;
    std::vector<at::Tensor> chunks;  // views of flat, replaced by the all-gather's frames
    std::vector<int64_t> offsets;
    int phase_recv = 0;  // phases received and applied
    bool started = false;
    std::deque<transport::Envelope> early;  // frames that arrived before start()
  };
  void on_frame(transport::Envelope&& env);
  void apply(size_t b, transport::Envelope&& env);
  void send_phase(size_t b, int phase);
  size_t chunk_sent(int phase) const;
  size_t chunk_received(int phase) const;

  PeerRing& ring_;
  std::vector<Bucket> buckets_;
  uint64_t step_ = 0;
  size_t done_ = 0;
  bool listening_ = false;
  uint64_t writes_pending_ = 0;
  std::deque<transport::Envelope> ahead_;  // frames of the next step
};

// True when there are at least two workers and every one reported a peer port: they can link
// directly (a strategy's topology=auto then leaves the coordinator out of the data path).
bool can_link(const std::vector<WorkerInfo>& workers);

// Asks the workers to link directly (core/net/peer.h): each instruction's run request gets options
// "peers" (`members`' names and peer addresses, in rank order) and "session"; the worker side is
// join_links(). Throws, naming `what` (e.g. "gradsum topology=ring") and the worker, when a
// member reported no peer port.
void ask_to_link(std::vector<Instruction>& instructions, const std::vector<WorkerInfo>& members, uint64_t session,
                 const std::string& what);

}  // namespace fedra
