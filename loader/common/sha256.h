// Incremental SHA-256 over OpenSSL.
#ifndef WEIGHTD_LOADER_COMMON_SHA256_H_
#define WEIGHTD_LOADER_COMMON_SHA256_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"

namespace weightd {

class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void Update(const void* data, size_t len);
  void Update(absl::string_view data) { Update(data.data(), data.size()); }
  // Lowercase hex of the digest; the object must not be used afterwards.
  std::string FinishHex();

 private:
  void* ctx_;  // EVP_MD_CTX
};

std::string Sha256Hex(absl::string_view data);

}  // namespace weightd

#endif  // WEIGHTD_LOADER_COMMON_SHA256_H_
