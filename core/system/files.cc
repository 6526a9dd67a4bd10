#include "core/system/files.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "core/kit/error.h"

namespace fedra {

void write_fully(int fd, const std::string& text, const std::string& path) {
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    FEDRA_REQUIRE(n > 0, "cannot write '{}': {}", path, std::strerror(errno));
    done += static_cast<size_t>(n);
  }
}

void write_file_atomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  FEDRA_REQUIRE(fd >= 0, "cannot create '{}': {}", tmp, std::strerror(errno));
  try {
    write_fully(fd, text, tmp);
    FEDRA_REQUIRE(::fsync(fd) == 0, "cannot flush '{}' to disk: {}", tmp, std::strerror(errno));
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  ::close(fd);
  FEDRA_REQUIRE(::rename(tmp.c_str(), path.c_str()) == 0, "cannot rename '{}' to '{}': {}", tmp,
                path, std::strerror(errno));
  // The rename is durable only once the directory entry is: fsync the directory too.
  const std::string parent = std::filesystem::path(path).parent_path().string();
  const int dir = ::open(parent.empty() ? "." : parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  FEDRA_REQUIRE(dir >= 0, "cannot open directory '{}' to flush it: {}", parent, std::strerror(errno));
  const int rc = ::fsync(dir);
  const int err = errno;
  ::close(dir);
  FEDRA_REQUIRE(rc == 0, "cannot flush directory '{}' to disk: {}", parent, std::strerror(err));
}


}  // namespace fedra
