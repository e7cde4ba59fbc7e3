// A read-only memory-mapped file. Weights are used straight from the page cache, never copied through
// the JS heap. Throws ERR_FILE_NOT_FOUND / ERR_FILE_READ naming the path.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace l2 {

class MappedFile {
 public:
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }
  // Asks the kernel to read ahead (sequential access): speeds up a cold load.
  void advise_sequential() const;

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

bool file_exists(const std::string& path);
bool is_directory(const std::string& path);
std::string read_text_file(const std::string& path, size_t max_bytes = 64u << 20);

}  // namespace l2
