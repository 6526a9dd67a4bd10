// Files written so that a crash or a full disk never leaves one half-written: every write is
// checked, and a file that replaces another goes through a temporary file, fsync and rename.
// Errors name the file and the system's reason.
#pragma once

#include <string>

namespace fedra {

// Writes `text` to `path` atomically: a temporary file in the same directory, fsync, rename,
// fsync of the directory.
void write_file_atomically(const std::string& path, const std::string& text);

// Writes all of `text` to the open descriptor `fd` (retrying short writes and EINTR); `path`
// names the file in the error.
void write_fully(int fd, const std::string& text, const std::string& path);

}  // namespace fedra
