// Secure aggregation's messages (strategies/fedavg/secagg.h has the protocol), typed: one encode
// and one decode each, the decode refusing a missing or misshapen field by name. Keys are X25519
// public keys (32 bytes), shares Shamir shares (secagg::kShareBytes), sealed shares AES-256-GCM
// boxes of the sender's id, the recipient's id, its s share and its b share.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "core/federated/secagg.h"
#include "core/kit/message.h"
#include "core/loops/cohort.h"

namespace fedra::fedavg {

namespace secagg_wire {

inline constexpr const char* kMaskLabel = "fedra-secagg-mask";
inline constexpr const char* kSealLabel = "fedra-secagg-seal";
inline constexpr const char* kCommitLabel = "fedra-secagg-b";
inline constexpr size_t kPlainBytes = 16 + 2 * secagg::kShareBytes;  // sender, recipient, s share, b share
inline constexpr size_t kSealedBytes = kPlainBytes + 16;

using Bytes = std::vector<uint8_t>;

// What binds a sealed share to its round, sender and recipient: a share replayed from another
// round or moved to another worker does not open.
Bytes seal_aad(uint32_t round, WorkerId from, WorkerId to);
// One key per pair and round; the sender tells the direction.
std::array<uint8_t, 12> seal_nonce(WorkerId from);
void put_u64(Bytes& out, uint64_t v);
uint64_t get_u64(const uint8_t* p);
// The pairwise mask's sign: the smaller id adds, the larger subtracts, so the two cancel.
inline bool subtracts(WorkerId self, WorkerId other) { return self > other; }

}  // namespace secagg_wire

// worker -> coordinator: its two fresh public keys (c seals shares, s agrees masks).
struct SecAggKeys {
  static constexpr const char* kKind = "secagg.keys";
  uint32_t round = 0;
  secagg::Key c_pk{}, s_pk{};
  Message encode() const;
  static SecAggKeys decode(const Message& m, const std::string& who);
};

// coordinator -> worker: every key holder, in id order, and how the neighbourhood graph is drawn.
struct SecAggRoster {
  static constexpr const char* kKind = "secagg.roster";
  uint32_t round = 0;
  std::vector<WorkerId> ids;
  std::vector<secagg::Key> c_pk, s_pk;  // one each per id
  int64_t neighbours = 0;               // k
  int64_t threshold = 0;                // t
  uint64_t graph_seed = 0;              // below 2^52: exact as a metric
  Message encode() const;
  static SecAggRoster decode(const Message& m);
};

// worker -> coordinator: its shares, sealed for each neighbour, and its commitment to b.
struct SecAggShares {
  static constexpr const char* kKind = "secagg.shares";
  uint32_t round = 0;
  std::vector<WorkerId> to;
  std::vector<secagg_wire::Bytes> sealed;  // kSealedBytes each, one per `to`
  secagg::Key b_commit{};
  Message encode() const;
  static SecAggShares decode(const Message& m, const std::string& who);
};

// coordinator -> worker: the sealed shares its neighbours addressed to it.
struct SecAggInbox {
  static constexpr const char* kKind = "secagg.inbox";
  uint32_t round = 0;
  std::vector<WorkerId> from;
  std::vector<secagg_wire::Bytes> sealed;
  Message encode() const;
  static SecAggInbox decode(const Message& m);
};

// worker -> coordinator: its masked input in Z_2^bits, and its training figures.
struct SecAggMasked {
  static constexpr const char* kKind = "secagg.masked";
  uint32_t round = 0;
  at::Tensor y;  // int32 (bits 32) or int64 [length]
  std::map<std::string, double> figures;  // num_examples, train_loss, ..., secagg_clipped, secagg_cpu_s
  Message encode() const;
  static SecAggMasked decode(Message&& m);
};

// coordinator -> worker: which of its neighbours uploaded and which dropped after sharing.
struct SecAggUnmask {
  static constexpr const char* kKind = "secagg.unmask";
  uint32_t round = 0;
  std::vector<WorkerId> survivors, dropped;
  Message encode() const;
  static SecAggUnmask decode(const Message& m);
};

// worker -> coordinator (the reply): its shares of the uploaders' b (its own among them) and of
// the dropped workers' s.
struct SecAggReveal {
  static constexpr const char* kKind = "secagg.reveal";
  uint32_t round = 0;
  std::vector<WorkerId> b_of, s_of;
  std::vector<secagg::Share> b_shares, s_shares;
  Message encode() const;
  static SecAggReveal decode(const Message& m, const std::string& who);
};

}  // namespace fedra::fedavg
