// Federated learning's building blocks beyond one strategy: the streaming weighted mean, robust
// rules and clipping, server optimisers, differential privacy and its accountant, secure
// aggregation's primitives, simulated device fleets.
#pragma once

#include "core/federated/aggregation.h"
#include "core/federated/fleet.h"
#include "core/federated/privacy.h"
#include "core/federated/robust_aggregation.h"
#include "core/federated/secagg.h"
#include "core/federated/server_optimizer.h"
