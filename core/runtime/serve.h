// The worker's loop: requests from the coordinator in, the strategy's worker half, replies out.
//
// serve() is the one place that turns a stream of frames into calls of WorkerStrategy::handle:
// every Fedra worker runs it, over TCP (run_worker, core/runtime/worker.h) or in memory (the
// tests' LocalCohort), so a strategy meets the same behaviour everywhere:
//  - one request at a time; the reply carries the request's id and round;
//  - parts of an exchange (Envelope.partial) go to the WorkerLink of the request they belong to;
//    a cancelled exchange, or a new request arriving mid-exchange, ends it (WorkerLink::receive
//    throws) and the new request is handled next;
//  - a request the coordinator has already given up on (an expiry notice is waiting behind it)
//    is skipped, not worked on for nothing;
//  - an Error (or a LibTorch exception) from handle() becomes an `error` reply, and the worker
//    stays in the job;
//  - "shutdown" ends the loop with 0; a broken link or a malformed frame ends it with 1, after
//    telling the coordinator why when there is something to tell.
// Runs on the calling thread; no hand-offs.
#pragma once

#include <string>

#include "core/kit/strategy.h"
#include "transport/channel.h"

namespace fedra {

// Returns the worker's exit code: 0 when the coordinator ended the job, 1 otherwise.
int serve(transport::Channel& channel, WorkerStrategy& strategy, WorkerContext& ctx);

// Before hanging up on a coordinator whose message this worker could not take (a malformed frame,
// an unusable welcome): an `error` without a request id saying why, as the protocol promises.
// Best effort: the link may be gone already. Only for kFailed (nothing to tell otherwise).
void tell_coordinator(transport::Channel& channel, const std::string& name, const Error& e);

}  // namespace fedra
