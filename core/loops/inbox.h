// Inbox: a worker half's messages of one exchange that arrived before it asked for them.
//
// Workers of model-parallel strategies wait for one particular message (a collective's result, a
// stage's activations for micro-batch k) while others of the same exchange may come first.
// await() returns the first message `wanted` accepts, from those kept or fresh from the link,
// and keeps the others after `keep` has checked them (it throws to refuse one: an unexpected
// kind, or too many waiting). Time spent blocked on the link is added to `wait_s`.
// One thread; valid for the request being handled (clear() it at the start of each).
#pragma once

#include <chrono>
#include <deque>
#include <functional>

#include "core/kit/message.h"
#include "core/kit/strategy.h"

namespace fedra {

class Inbox {
 public:
  void clear() { kept_.clear(); }
  size_t size() const { return kept_.size(); }

  Message await(WorkerLink& link, std::chrono::milliseconds timeout, const std::function<bool(const Message&)>& wanted,
                const std::function<void(const Message&)>& keep, double& wait_s) {
    for (auto it = kept_.begin(); it != kept_.end(); ++it) {
      if (wanted(*it)) {
        Message m = std::move(*it);
        kept_.erase(it);
        return m;
      }
    }
    const auto t0 = std::chrono::steady_clock::now();
    for (;;) {
      Message m = link.receive(timeout);
      if (wanted(m)) {
        wait_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        return m;
      }
      keep(m);
      kept_.push_back(std::move(m));
    }
  }

 private:
  std::deque<Message> kept_;
};

}  // namespace fedra
