// Secure aggregation for the FedAvg family: the coordinator learns the weighted sum of the
// workers' updates, never one worker's (Bonawitz et al. 2017, with Bell et al. 2020's SecAgg+
// neighbourhoods). One FedAvg round under secagg is one exchange (Cohort::exchange) in which
// every sampled worker, after training, goes through four steps with the coordinator:
//
//   worker -> coordinator            coordinator -> worker
//   secagg.keys     two X25519 public keys (c: to seal shares, s: to agree masks)
//                                    secagg.roster   every key-holder's id and keys; graph seed, k, t
//   secagg.shares   t-of-n Shamir shares of its s secret and of its self-mask seed b, one sealed
//                   (AES-256-GCM) for each neighbour; a commitment SHA-256(b)
//                                    secagg.inbox    the sealed shares addressed to it
//   secagg.masked   its update, fixed-point in Z_2^bits, plus PRG(b) and +-PRG(s_uv) per neighbour
//                   v that shared (the pairwise masks cancel in the sum); its training figures
//                                    secagg.unmask   which of its neighbours uploaded, which dropped
//   secagg.reveal   (the reply) its shares of b for neighbours that uploaded, of s for those that
//                   dropped after sharing; never both for one neighbour
//
// The coordinator sums the masked inputs as they arrive, rebuilds each uploader's b and each
// dropped worker's s from t shares (checked against the commitment and the public key), removes
// their masks, and decodes the sum. Workers that stop answering a step within secagg_timeout are
// left out of the steps after it (dropouts); the round fails, naming the reason, when fewer than t
// shares of some secret remain. docs/security.md has the threat model; docs/protocol.md the
// messages.
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "core/federated/secagg.h"
#include "core/kit/message.h"
#include "core/kit/options.h"
#include "core/kit/strategy.h"
#include "core/loops/cohort.h"
#include "strategies/fedavg/secagg_messages.h"

namespace fedra::fedavg {

struct SecAggOptions {
  FEDRA_ARG(bool, secagg) = false;
  FEDRA_ARG(int64_t, secagg_bits) = 32;
  FEDRA_ARG(double, secagg_clip) = 4;
  FEDRA_ARG(int64_t, secagg_threshold) = 0;
  FEDRA_ARG(int64_t, secagg_neighbours) = 0;
  FEDRA_ARG(double, secagg_timeout) = 60;

  template <class F>
  void visit(F&& f) {
    f("secagg", secagg_,
      "secure aggregation: the coordinator learns only the weighted sum of the updates (docs/security.md)");
    f("secagg_bits", secagg_bits_, "secagg: the ring Z_2^bits the updates are encoded in, 32 or 64");
    f("secagg_clip", secagg_clip_,
      "secagg: each coordinate of a worker's update (trained - global) is clipped to [-clip, clip] before encoding");
    f("secagg_threshold", secagg_threshold_,
      "secagg: t, the shares that rebuild a worker's secrets (held by it and its k neighbours); 0 = a majority, "
      "floor((k+1)/2) + 1");
    f("secagg_neighbours", secagg_neighbours_,
      "secagg: k, the neighbours each worker masks with and shares to (SecAgg+); 0 = every other worker");
    f("secagg_timeout", secagg_timeout_, "secagg: seconds each step after training waits before leaving a worker out");
  }
  void validate(const std::string& scope) const;
};

// What a worker is told in its fedavg.fit under secagg (options secagg.*).
struct SecAggIns {
  bool on = false;
  secagg::Encoding encoding;
  double weight = 1;  // the weight its update is multiplied by before encoding
  double timeout_s = 60;     // waits for the coordinator's later steps
  double first_wait_s = 660;  // the wait for the roster, which follows everybody's training
  std::string drop;   // tests: the step after which this worker drops (keys, shares, masked; ":exit" exits)
  std::string cheat;  // tests: wrong_share, replay or length
  void encode(Message& fit) const;
  static SecAggIns decode(const Message& fit);
};

// The float tensors of `global` in order, as one vector (the layout every masked input has).
int64_t secagg_length(const NamedTensors& global);

// The worker's side, after local training: the protocol above over `link`; returns the reply
// (secagg.reveal). `figures` (num_examples, train_loss, ...) travel with the masked input.
Message secagg_worker(const SecAggIns& ins, uint32_t round, const NamedTensors& global, const NamedTensors& trained,
                      const std::map<std::string, double>& figures, WorkerContext& ctx, WorkerLink& link);

// The coordinator's side of one round.
class SecAggRound {
 public:
  struct Result {
    bool ok = false;
    std::string failure;        // why the round failed, when it did
    NamedTensors sum;           // sum over uploaders of weight * update (float tensors of the model)
    double weight_sum = 0;      // sum of the uploaders' weights
    std::vector<std::pair<std::string, std::map<std::string, double>>> figures;  // per uploader
    size_t dropped = 0;         // asked workers that did not see the round through (dropped or refused)
    size_t refused = 0;         // workers refused for a protocol violation
    size_t clipped = 0;         // coordinates clipped, over all uploaders
    double worker_cpu_s = 0;    // the most CPU time one worker spent on the protocol (its report)
  };

  // `weights`: each asked worker's weight (its example count, or 1).
  SecAggRound(uint32_t round, const SecAggOptions& options, const NamedTensors& global,
              std::map<WorkerId, std::pair<std::string, double>> asked, uint64_t graph_seed);
  // The secagg part of worker w's fedavg.fit.
  SecAggIns instruction(WorkerId w, double training_s) const;
  // Runs the exchange (the instructions are the workers' fedavg.fit) until every step is done.
  std::vector<Failure> run(Cohort& cohort, std::vector<Instruction> instructions, Deadline training_deadline);
  Result& result() { return result_; }

 private:
  enum class Step { kKeys, kShares, kMasked, kReveal, kDone };
  struct Member {
    WorkerId id = 0;
    std::string name;
    double weight = 1;
    bool alive = true;
    Step next = Step::kKeys;  // the message expected from it next
    secagg::Key c_pk{}, s_pk{}, b_commit{};
    std::vector<WorkerId> neighbours;  // in the roster's graph
    std::vector<std::pair<WorkerId, std::vector<uint8_t>>> sealed;  // its shares, by recipient
    std::map<WorkerId, secagg::Share> b_shares, s_shares;  // shares others revealed of its secrets
  };

  void on_part(const WorkerInfo& w, Message&& m);
  void on_reply(const WorkerInfo& w, Message&& m);
  void on_failure(const Failure& f);
  bool on_deadline();
  void advance();
  void start_shares();
  void start_masked();
  void start_reveal();
  void finish();
  void fail(const std::string& why);
  [[noreturn]] void refuse(const std::string& why);
  std::vector<WorkerId> in_step(Step reached) const;   // alive, and `reached` is the message expected next
  std::vector<WorkerId> delivered(Step step) const;    // sent its `step` message (since failed or not)
  Member& member(const WorkerInfo& w, Step expected, const std::string& kind);
  secagg::Key rebuild(Member& owner, bool self_mask, std::vector<std::string>& liars);

  uint32_t round_;
  SecAggOptions options_;
  const NamedTensors& global_;
  int64_t length_ = 0;
  secagg::Encoding encoding_;
  uint64_t graph_seed_;
  std::map<WorkerId, Member> members_;
  Step step_ = Step::kKeys;
  Cohort* cohort_ = nullptr;
  Deadline deadline_;
  std::vector<WorkerId> u1_, u2_, u3_;  // sent keys; sent shares; uploaded
  size_t threshold_ = 0;
  std::vector<uint64_t> ring_;  // the running sum of masked inputs (uint32 words packed when bits = 32)
  Result result_;
};

}  // namespace fedra::fedavg
