#include "strategies/gradsum/messages.h"

#include "strategies/gradsum/gradsum.h"

namespace fedra::gradsum {

Message Bucket::encode(const char* kind) const {
  Message m(kind);
  m.step = step;
  m.tensors = pieces;
  m.metrics["bucket"] = static_cast<double>(bucket);
  if (loss) {
    m.metrics["loss"] = loss->first;
    m.metrics["examples"] = loss->second;
  }
  return m;
}

Bucket Bucket::decode(Message&& m, const char* kind, size_t buckets, const std::string& who) {
  m.expect_kind(kind, who);
  const double b = m.metric("bucket");
  FEDRA_REQUIRE(b >= 0 && b < static_cast<double>(buckets) && b == std::floor(b), "{} sent bucket {}, the model has {}",
                who, b, buckets);
  Bucket out;
  out.step = m.step;
  out.bucket = static_cast<size_t>(b);
  if (m.metrics.count("loss") != 0) out.loss = std::make_pair(m.metric("loss"), m.metric("examples"));
  out.pieces = std::move(m.tensors);
  return out;
}

Message StepCheck::encode() const {
  Message m(kCheck);
  m.step = step;
  m.options["checksum"] = checksum;
  return m;
}

StepCheck StepCheck::decode(const Message& m, const std::string& who) {
  m.expect_kind(kCheck, who);
  return {m.step, m.option("checksum")};
}

Message RoundDone::encode() const {
  Message m = encode_reply(kDone, round, *this, &RoundDone::buffers);
  append_prefixed(m.tensors, "param/", params);
  append_prefixed(m.tensors, "opt/", opt_state);
  if (!checksum.empty()) m.options["checksum"] = checksum;
  return m;
}

RoundDone RoundDone::decode(Message&& m, const std::string& who) {
  const std::string checksum = m.option_or("checksum", "");
  RoundDone d = decode_reply(std::move(m), kDone, who, who + "'s", &RoundDone::buffers);
  d.params = take_prefixed(d.buffers, "param/");
  d.opt_state = take_prefixed(d.buffers, "opt/");
  d.checksum = checksum;
  return d;
}

}  // namespace fedra::gradsum
