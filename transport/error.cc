#include "transport/error.h"

namespace fedra {

const char* error_kind_name(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kFailed: return "failed";
    case ErrorKind::kOverloaded: return "overloaded";
    case ErrorKind::kDisconnected: return "disconnected";
    case ErrorKind::kUnimplemented: return "unimplemented";
  }
  return "unknown";
}

}  // namespace fedra
