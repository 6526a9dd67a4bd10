// The header every test file includes for doctest, first.
//
// Debian's LibTorch is built with glog (C10_USE_GLOG), whose logging.h defines CHECK, CHECK_EQ,
// CHECK_NE, ... When a torch header came after doctest, glog's CHECK silently replaced doctest's:
// a failed check aborted the whole binary instead of being reported, and no check was counted.
// This header brings in c10's logging (and glog with it) first, drops glog's colliding macros,
// then includes doctest, whose macros are the ones left standing; later torch includes do not
// re-include glog. tests/check_includes.cmake fails the suite if a test includes doctest directly.
#pragma once

#include <c10/util/Logging.h>

#undef CHECK
#undef CHECK_EQ
#undef CHECK_NE
#undef CHECK_LE
#undef CHECK_LT
#undef CHECK_GE
#undef CHECK_GT

#include <doctest/doctest.h>
