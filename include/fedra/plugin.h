// What a plugin includes to add its strategies (docs/plugins.md): FEDRA_PLUGIN, the registry and
// make_strategy. With fedra/strategy.h (a scheme of its own) or fedra/fedavg.h (a FedAvg variant)
// that is all a plugin needs; fedra/learning.h and fedra/federated.h add the building blocks.
//
// These five headers are Fedra's public face: a plugin includes them and nothing else. The
// headers they include are installed with them (cmake --install) but are not an interface.
#pragma once

#include "core/kit/plugin.h"
#include "core/kit/registry.h"
