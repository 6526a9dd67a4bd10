// `fedra export CHECKPOINT --out model.pt`: a checkpoint as the trained model, TorchScript.
#pragma once

namespace fedra::cli {

// argv[0] is "export". Returns the exit code (2 for a usage or input error, said on stderr).
int run_export(int argc, const char* const argv[]);

}  // namespace fedra::cli
