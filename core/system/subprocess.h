// Child processes for `fedra simulate`, the integration tests and the benchmarks.
//
// spawn() starts a program with its stdout and stderr appended to a log file, optionally with
// extra environment variables, and arranges for the child to be killed if this process dies
// (PR_SET_PDEATHSIG), so an interrupted simulation leaves no orphans. wait() reaps with a timeout.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace fedra {

struct ChildProcess {
  pid_t pid = -1;
  std::string log_path;
};

ChildProcess spawn(const std::vector<std::string>& argv, const std::string& log_path,
                   const std::vector<std::pair<std::string, std::string>>& env = {});

// The exit code (128 + signal if killed by one), or nullopt if still running at the timeout.
std::optional<int> wait_for(const ChildProcess& child, std::chrono::milliseconds timeout);

// SIGKILL and reap.
void kill_child(const ChildProcess& child);

// Path of the running executable (/proc/self/exe resolved).
std::string self_executable();

}  // namespace fedra
