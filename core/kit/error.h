// fedra::Error, FEDRA_REQUIRE, FEDRA_FAIL, FEDRA_ASSERT: the one error type of every layer.
//
// It is defined with the transport, the lowest layer (transport/error.h), so frames can fail
// with it too; everything above includes it from here, so no strategy or plugin reaches into
// transport/ for it. See transport/error.h for the kinds and what a caller does with each.
#pragma once

#include "transport/error.h"
