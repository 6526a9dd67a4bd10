// A scheme of its own: the two halves (CoordinatorStrategy, WorkerStrategy), Message and typed
// messages, options and the groups strategies share, the Cohort a coordinator half talks
// through, the round and step loops to derive from (RoundStrategy, SteppedStrategy), a worker
// half's Inbox, and worker-to-worker links (PeerHub, rings and chains).
#pragma once

#include "core/kit/error.h"
#include "core/kit/message.h"
#include "core/kit/option_groups.h"
#include "core/kit/options.h"
#include "core/kit/registry.h"
#include "core/kit/strategy.h"
#include "core/loops/cohort.h"
#include "core/loops/inbox.h"
#include "core/loops/round_strategy.h"
#include "core/loops/stepped_strategy.h"
#include "core/net/peer.h"
