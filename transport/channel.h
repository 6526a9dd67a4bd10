// Channel: one framed, ordered, two-way link used from a plain blocking loop (a worker's link to
// its coordinator, tools, tests).
//
// Every implementation carries whole Envelopes as Cap'n Proto frames, so what crosses a Channel
// is exactly what crosses the wire. The TCP one (with or without TLS) is
// transport::tcp::BlockingChannel; tests run worker halves over an in-process one
// (tests/support/local_cohort.h). Not thread-safe: one thread uses a channel.
#pragma once

#include <chrono>
#include <optional>
#include <string>

#include "transport/codec.h"

namespace fedra::transport {

class Channel {
 public:
  virtual ~Channel() = default;

  // Blocks until the frame is handed over. Throws Error if the link is closed, with the peer's
  // own reason when it sent one (e.g. the frame was over its size limit).
  virtual void send(const Envelope& envelope) = 0;
  // Blocks until a frame arrives and decodes it. Throws Error(kOverloaded) on timeout,
  // Error(kDisconnected) when the peer closes, Error(kFailed) for a malformed frame.
  virtual Envelope receive(std::optional<std::chrono::milliseconds> timeout = std::nullopt) = 0;
  // A frame that has already arrived, decoded, without waiting; nullopt if none has (or the link
  // closed: the next receive() says why).
  virtual std::optional<Envelope> poll_receive() = 0;
  virtual void close() = 0;

  // Who is at the other end, for messages ("127.0.0.1:7000", "in-process").
  virtual const std::string& peer() const = 0;
  // This side's address as the peer reaches it ("" if unknown or none).
  virtual std::string local_host() const = 0;
};

}  // namespace fedra::transport
