#include "loader/format/zip.h"

#include <zlib.h>

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace weightd {
namespace {

using ::testing::HasSubstr;

void Put16(std::string* s, uint16_t v) {
  s->push_back(static_cast<char>(v & 0xFF));
  s->push_back(static_cast<char>(v >> 8));
}
void Put32(std::string* s, uint32_t v) {
  Put16(s, v & 0xFFFF);
  Put16(s, v >> 16);
}
void Put64(std::string* s, uint64_t v) {
  Put32(s, v & 0xFFFFFFFF);
  Put32(s, v >> 32);
}

struct Rec {
  std::string name;
  std::string data;
  bool deflate = false;
  bool zip64 = false;       // sizes/offset in the zip64 extra field
  bool descriptor = false;  // sizes after the data (flag bit 3)
  size_t pad = 0;           // local extra field bytes (alignment padding)
};

// A small zip writer for tests.
std::string MakeZip(const std::vector<Rec>& recs, bool eocd64 = false) {
  std::string out, cd;
  for (const Rec& r : recs) {
    std::string payload = r.data;
    if (r.deflate) {
      z_stream zs = {};
      deflateInit2(&zs, 6, Z_DEFLATED, -MAX_WBITS, 8, Z_DEFAULT_STRATEGY);
      std::string buf(compressBound(r.data.size()) + 64, '\0');
      zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(r.data.data()));
      zs.avail_in = r.data.size();
      zs.next_out = reinterpret_cast<Bytef*>(&buf[0]);
      zs.avail_out = buf.size();
      deflate(&zs, Z_FINISH);
      buf.resize(zs.total_out);
      deflateEnd(&zs);
      payload = buf;
    }
    uint32_t crc =
        crc32(0, reinterpret_cast<const Bytef*>(r.data.data()), r.data.size());
    uint64_t offset = out.size();
    uint16_t flags = r.descriptor ? 8 : 0;
    uint16_t method = r.deflate ? 8 : 0;
    Put32(&out, 0x04034b50);
    Put16(&out, 45);
    Put16(&out, flags);
    Put16(&out, method);
    Put32(&out, 0);
    Put32(&out, r.descriptor ? 0 : crc);
    Put32(&out, r.descriptor ? 0 : payload.size());
    Put32(&out, r.descriptor ? 0 : r.data.size());
    Put16(&out, r.name.size());
    Put16(&out, r.pad);
    out += r.name;
    out += std::string(r.pad, '\0');
    out += payload;
    if (r.descriptor) {
      Put32(&out, 0x08074b50);
      Put32(&out, crc);
      Put32(&out, payload.size());
      Put32(&out, r.data.size());
    }
    std::string extra;
    if (r.zip64) {
      Put16(&extra, 1);
      Put16(&extra, 24);
      Put64(&extra, r.data.size());
      Put64(&extra, payload.size());
      Put64(&extra, offset);
    }
    Put32(&cd, 0x02014b50);
    Put16(&cd, 45);
    Put16(&cd, 45);
    Put16(&cd, flags);
    Put16(&cd, method);
    Put32(&cd, 0);
    Put32(&cd, crc);
    Put32(&cd, r.zip64 ? 0xFFFFFFFF : payload.size());
    Put32(&cd, r.zip64 ? 0xFFFFFFFF : r.data.size());
    Put16(&cd, r.name.size());
    Put16(&cd, extra.size());
    Put16(&cd, 0);
    Put16(&cd, 0);
    Put16(&cd, 0);
    Put32(&cd, 0);
    Put32(&cd, r.zip64 ? 0xFFFFFFFF : offset);
    cd += r.name;
    cd += extra;
  }
  uint64_t cd_offset = out.size();
  out += cd;
  if (eocd64) {
    uint64_t eocd64_offset = out.size();
    Put32(&out, 0x06064b50);
    Put64(&out, 44);
    Put16(&out, 45);
    Put16(&out, 45);
    Put32(&out, 0);
    Put32(&out, 0);
    Put64(&out, recs.size());
    Put64(&out, recs.size());
    Put64(&out, cd.size());
    Put64(&out, cd_offset);
    Put32(&out, 0x07064b50);
    Put32(&out, 0);
    Put64(&out, eocd64_offset);
    Put32(&out, 1);
  }
  Put32(&out, 0x06054b50);
  Put16(&out, 0);
  Put16(&out, 0);
  Put16(&out, eocd64 ? 0xFFFF : recs.size());
  Put16(&out, eocd64 ? 0xFFFF : recs.size());
  Put32(&out, eocd64 ? 0xFFFFFFFF : cd.size());
  Put32(&out, eocd64 ? 0xFFFFFFFF : cd_offset);
  Put16(&out, 0);
  return out;
}

TEST(ZipTest, StoredRecordsAreZeroCopy) {
  std::string z = MakeZip(
      {{"a/data.pkl", "hello"}, {"a/data/0", "xyz", false, false, false, 13}});
  auto zip = ZipArchive::Open(z);
  ASSERT_TRUE(zip.ok()) << zip.status();
  ASSERT_EQ(zip->entries().size(), 2u);
  const ZipEntry* e = zip->Find("a/data/0");
  ASSERT_NE(e, nullptr);
  auto data = zip->StoredData(*e);
  ASSERT_TRUE(data.ok());
  EXPECT_EQ(*data, "xyz");
  EXPECT_EQ(data->data(), z.data() + e->data_offset);
  EXPECT_TRUE(zip->VerifyCrc(*e).ok());
  EXPECT_EQ(zip->Find("missing"), nullptr);
}

TEST(ZipTest, DeflatedAndDescriptors) {
  std::string big(10000, 'q');
  std::string z = MakeZip({{"code/x.py", big, true, false, true}});
  auto zip = ZipArchive::Open(z);
  ASSERT_TRUE(zip.ok()) << zip.status();
  const ZipEntry* e = zip->Find("code/x.py");
  EXPECT_FALSE(zip->StoredData(*e).ok());
  auto data = zip->Extract(*e);
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_EQ(*data, big);
}

TEST(ZipTest, Zip64) {
  std::string z = MakeZip(
      {{"a/data.pkl", "abc", false, true}, {"a/b", "de", false, true}}, true);
  auto zip = ZipArchive::Open(z);
  ASSERT_TRUE(zip.ok()) << zip.status();
  EXPECT_EQ(*zip->StoredData(*zip->Find("a/b")), "de");
}

TEST(ZipTest, CorruptArchives) {
  std::string good = MakeZip({{"a/x", "0123456789"}, {"a/y", "abc"}});
  struct Case {
    std::string bytes;
    const char* message;
  };
  std::string dup = MakeZip({{"a/x", "1"}, {"a/x", "2"}});
  std::string overlap = good;
  // Point the second central entry's local header offset at the first one's.
  size_t cd = good.find(std::string("PK\x01\x02", 4));
  size_t cd2 = good.find(std::string("PK\x01\x02", 4), cd + 1);
  overlap[cd2 + 42] = 0;
  std::string past = good;
  past[cd + 20] = 100;  // compressed size of "a/x" beyond the data
  past[cd + 24] = 100;
  std::string bad_sig = good;
  bad_sig[0] = 'X';
  std::string bad_crc = MakeZip({{"a", std::string(100, 'z'), true}});
  bad_crc[bad_crc.find(std::string("PK\x01\x02", 4)) + 16] ^= 1;
  const Case cases[] = {
      {"", "too short"},
      {good.substr(0, good.size() - 5), "missing end of central directory"},
      {good.substr(0, good.size() / 2), "missing end of central directory"},
      {dup, "duplicate entry name \"a/x\""},
      {overlap, "local header name does not match"},
      {past, "extends past the file data"},
      {bad_sig, "bad local header signature"},
  };
  for (const Case& c : cases) {
    auto zip = ZipArchive::Open(c.bytes);
    ASSERT_FALSE(zip.ok()) << c.message;
    EXPECT_THAT(zip.status().message(), HasSubstr(c.message));
  }
  auto zip = ZipArchive::Open(bad_crc);
  ASSERT_TRUE(zip.ok());
  auto data = zip->Extract(zip->entries()[0]);
  ASSERT_FALSE(data.ok());
  EXPECT_THAT(data.status().message(), HasSubstr("CRC-32"));
}

TEST(ZipTest, OverlappingEntries) {
  // Two central entries naming the same local header region with different
  // names cannot both match; craft overlap by a huge size on the first.
  std::string z = MakeZip({{"a", "0123456789"}, {"b", "x"}});
  size_t cd = z.find(std::string("PK\x01\x02", 4));
  // Grow "a" to run into "b"'s local header (stored: both sizes).
  z[cd + 20] = 20;
  z[cd + 24] = 20;
  auto zip = ZipArchive::Open(z);
  ASSERT_FALSE(zip.ok());
  EXPECT_THAT(zip.status().message(), HasSubstr("overlap"));
}

TEST(ZipTest, EveryTruncationFails) {
  std::string z = MakeZip({{"a/data.pkl", "hello"}, {"a/data/0", "xyz"}});
  for (size_t n = 0; n < z.size(); ++n) {
    EXPECT_FALSE(ZipArchive::Open(z.substr(0, n)).ok()) << n;
  }
}

}  // namespace
}  // namespace weightd
