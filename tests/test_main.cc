#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include "core/system/process.h"

int main(int argc, char** argv) {
  // The same matmul kernels as the fedra processes the tests start (and the Python references
  // they run), so that results computed here, there and in Python agree to the last bits the
  // tests compare (core/system/process.h).
  fedra::use_fast_blas_kernels(argv);
  return doctest::Context(argc, argv).run();
}
