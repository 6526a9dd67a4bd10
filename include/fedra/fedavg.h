// A FedAvg variant: FedAvgCoordinator and FedAvgWorker to subclass, and the parts a variant sets
// or adds (Rule, ServerStep, Stage, WorkerStage: strategies/fedavg/part.h says what each is).
#pragma once

#include "strategies/fedavg/fedavg.h"
#include "strategies/fedavg/part.h"
