#include "strategies/async/messages.h"

#include "strategies/async/async.h"

namespace fedra::async {

Message Dispatch::encode(const char* kind) const {
  Message m(kind, version);
  m.tensors = weights;  // shared: the coordinator replaces its model, never modifies it
  m.options["seed"] = std::to_string(seed);
  if (sleep_factor != 0 || net_s != 0) {
    m.metrics["sleep_factor"] = sleep_factor;
    m.metrics["net_s"] = net_s;
  }
  return m;
}

Dispatch Dispatch::decode(const Message& m) {
  m.require_options({"seed"});
  Dispatch d;
  d.version = m.round;
  d.weights = m.tensors;
  d.seed = static_cast<uint64_t>(OptionMap(m.kind, m.options).get_int("seed", 0));
  d.sleep_factor = m.metric_or("sleep_factor", 0);
  d.net_s = m.metric_or("net_s", 0);
  FEDRA_REQUIRE(d.sleep_factor > -1 && d.net_s >= 0 && d.net_s < 1e6, "'{}' asks to sleep {} x training + {} s",
                m.kind, d.sleep_factor, d.net_s);
  return d;
}

Message Update::encode() const { return encode_reply(kUpdate, version, *this, &Update::tensors); }

Update Update::decode(Message&& m, const std::string& who) {
  const uint32_t version = m.round;
  Update u = decode_reply(std::move(m), kUpdate, who, who + "'s", &Update::tensors);
  u.version = version;
  return u;
}

}  // namespace fedra::async
