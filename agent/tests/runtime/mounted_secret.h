// A Secret volume in the kubelet's layout, for tests of files the operator rotates:
// <dir>/<key> -> ..data/<key>, ..data -> ..<version>, updated by renaming a new
// ..data symlink over the old one (all files change at once).
#pragma once

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <string>

namespace fedge::agent::testing {

class MountedSecret {
 public:
  explicit MountedSecret(const std::string& name)
      : dir_((std::filesystem::temp_directory_path() /
              ("fedge-secret-" + std::to_string(::getpid()) + "-" + name))
                 .string()) {
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  ~MountedSecret() { std::filesystem::remove_all(dir_); }
  void Publish(const std::map<std::string, std::string>& files) {
    namespace fs = std::filesystem;
    const std::string version = "..v" + std::to_string(++version_);
    fs::create_directory(dir_ + "/" + version);
    for (const auto& [k, v] : files) std::ofstream(dir_ + "/" + version + "/" + k) << v;
    fs::create_symlink(version, dir_ + "/..data_tmp");
    fs::rename(dir_ + "/..data_tmp", dir_ + "/..data");
    for (const auto& [k, v] : files) {
      if (!fs::is_symlink(dir_ + "/" + k)) fs::create_symlink("..data/" + k, dir_ + "/" + k);
    }
  }
  std::string path(const std::string& key) const { return dir_ + "/" + key; }
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
  int version_ = 0;
};

}  // namespace fedge::agent::testing
