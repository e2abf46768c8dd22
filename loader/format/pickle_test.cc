#include "loader/format/pickle.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "loader/format/pytree.h"

namespace weightd {
namespace {

using ::testing::HasSubstr;

// The same object pickled by CPython 3.11 with protocols 0..5:
// {'a': [1, -2, 300, 70000, 2**40, -2**63, 2**70], 'b': (1.5, None, True,
// False), 'c': 'h\u00e9llo', 'd': b'\x00\xff', 'e': {3, 4}, 'f':
// frozenset([5]), 'g': bytearray(b'xy'), 'h': complex(1, 2), 'i':
// OrderedDict([('k', 1)]), 'j': [[], ()]}
const char* kProtocols[] = {
    // protocol 0
    "286470300a56610a70310a286c70320a49310a61492d320a61493330300a6149373030"
    "30300a614c313039393531313632373737364c0a614c2d393232333337323033363835"
    "343737353830384c0a614c313138303539313632303731373431313330333432344c0a"
    "617356620a70330a2846312e350a4e4930310a4930300a7470340a7356630a70350a56"
    "68e96c6c6f0a70360a7356640a70370a635f636f646563730a656e636f64650a70380a"
    "28565c7530303030ff0a70390a566c6174696e310a7031300a747031310a527031320a"
    "7356650a7031330a635f5f6275696c74696e5f5f0a7365740a7031340a28286c703135"
    "0a49330a6149340a61747031360a527031370a7356660a7031380a635f5f6275696c74"
    "696e5f5f0a66726f7a656e7365740a7031390a28286c7032300a49350a61747032310a"
    "527032320a7356670a7032330a635f5f6275696c74696e5f5f0a627974656172726179"
    "0a7032340a2867380a285678790a7032350a6731300a747032360a527032370a747032"
    "380a527032390a7356680a7033300a635f5f6275696c74696e5f5f0a636f6d706c6578"
    "0a7033310a2846312e300a46322e300a747033320a527033330a7356690a7033340a63"
    "636f6c6c656374696f6e730a4f726465726564446963740a7033350a2874527033360a"
    "566b0a7033370a49310a7373566a0a7033380a286c7033390a286c7034300a61287461"
    "732e",
    // protocol 1
    "7d71002858010000006171015d7102284b014afeffffff4d2c014a701101004c313039"
    "393531313632373737364c0a4c2d393232333337323033363835343737353830384c0a"
    "4c313138303539313632303731373431313330333432344c0a65580100000062710328"
    "473ff80000000000004e4930310a4930300a7471045801000000637105580600000068"
    "c3a96c6c6f71065801000000647107635f636f646563730a656e636f64650a71082858"
    "0300000000c3bf710958060000006c6174696e31710a74710b52710c58010000006571"
    "0d635f5f6275696c74696e5f5f0a7365740a710e285d710f284b034b04657471105271"
    "115801000000667112635f5f6275696c74696e5f5f0a66726f7a656e7365740a711328"
    "5d71144b05617471155271165801000000677117635f5f6275696c74696e5f5f0a6279"
    "746561727261790a711828680828580200000078797119680a74711a52711b74711c52"
    "711d580100000068711e635f5f6275696c74696e5f5f0a636f6d706c65780a711f2847"
    "3ff0000000000000474000000000000000747120527121580100000069712263636f6c"
    "6c656374696f6e730a4f726465726564446963740a71232952712458010000006b7125"
    "4b017358010000006a71265d7127285d71282965752e",
    // protocol 2
    "80027d71002858010000006171015d7102284b014afeffffff4d2c014a701101008a06"
    "0000000000018a0800000000000000808a090000000000000000406558010000006271"
    "0328473ff80000000000004e88897471045801000000637105580600000068c3a96c6c"
    "6f71065801000000647107635f636f646563730a656e636f64650a7108580300000000"
    "c3bf710958060000006c6174696e31710a86710b52710c580100000065710d635f5f62"
    "75696c74696e5f5f0a7365740a710e5d710f284b034b04658571105271115801000000"
    "667112635f5f6275696c74696e5f5f0a66726f7a656e7365740a71135d71144b056185"
    "71155271165801000000677117635f5f6275696c74696e5f5f0a627974656172726179"
    "0a71186808580200000078797119680a86711a52711b85711c52711d58010000006871"
    "1e635f5f6275696c74696e5f5f0a636f6d706c65780a711f473ff00000000000004740"
    "00000000000000867120527121580100000069712263636f6c6c656374696f6e730a4f"
    "726465726564446963740a71232952712458010000006b71254b017358010000006a71"
    "265d7127285d71282965752e",
    // protocol 3
    "80037d71002858010000006171015d7102284b014afeffffff4d2c014a701101008a06"
    "0000000000018a0800000000000000808a090000000000000000406558010000006271"
    "0328473ff80000000000004e88897471045801000000637105580600000068c3a96c6c"
    "6f71065801000000647107430200ff71085801000000657109636275696c74696e730a"
    "7365740a710a5d710b284b034b046585710c52710d580100000066710e636275696c74"
    "696e730a66726f7a656e7365740a710f5d71104b056185711152711258010000006771"
    "13636275696c74696e730a6279746561727261790a7114430278797115857116527117"
    "5801000000687118636275696c74696e730a636f6d706c65780a7119473ff000000000"
    "000047400000000000000086711a52711b580100000069711c63636f6c6c656374696f"
    "6e730a4f726465726564446963740a711d2952711e58010000006b711f4b0173580100"
    "00006a71205d7121285d71222965752e",
    // protocol 4
    "800495fc000000000000007d94288c0161945d94284b014afeffffff4d2c014a701101"
    "008a060000000000018a0800000000000000808a09000000000000000040658c016294"
    "28473ff80000000000004e888974948c0163948c0668c3a96c6c6f948c016494430200"
    "ff948c0165948f94284b034b04908c016694284b0591948c0167948c086275696c7469"
    "6e73948c096279746561727261799493944302787994859452948c016894680e8c0763"
    "6f6d706c6578949394473ff0000000000000474000000000000000869452948c016994"
    "8c0b636f6c6c656374696f6e73948c0b4f726465726564446963749493942952948c01"
    "6b944b01738c016a945d94285d942965752e",
    // protocol 5
    "800595ef000000000000007d94288c0161945d94284b014afeffffff4d2c014a701101"
    "008a060000000000018a0800000000000000808a09000000000000000040658c016294"
    "28473ff80000000000004e888974948c0163948c0668c3a96c6c6f948c016494430200"
    "ff948c0165948f94284b034b04908c016694284b0591948c0167949602000000000000"
    "007879948c0168948c086275696c74696e73948c07636f6d706c6578949394473ff000"
    "0000000000474000000000000000869452948c0169948c0b636f6c6c656374696f6e73"
    "948c0b4f726465726564446963749493942952948c016b944b01738c016a945d94285d"
    "942965752e",
};

constexpr char kExpectedJson[] =
    R"({"a":[1,-2,300,70000,1099511627776,-9223372036854775808,)"
    R"({"__int__":"1180591620717411303424"}],)"
    R"("b":{"__tuple__":[1.5,null,true,false]},"c":"h\u00e9llo",)"
    R"("d":{"__bytes__":"AP8="},"e":{"__set__":[3,4]},)"
    R"("f":{"__frozenset__":[5]},"g":{"__bytearray__":"eHk="},)"
    R"("h":{"__complex__":[1.0,2.0]},)"
    R"("i":{"__class__":"collections.OrderedDict","k":1},)"
    R"("j":[[],{"__tuple__":[]}]})";

// A string literal with embedded NULs.
template <size_t N>
std::string B(const char (&a)[N]) {
  return std::string(a, N - 1);
}

absl::StatusOr<std::string> ToJson(absl::string_view data,
                                   UnpicklerOptions options = {}) {
  Unpickler u(data, options, nullptr);
  auto root = u.Load();
  if (!root.ok()) return root.status();
  PickleResult r = u.Release();
  std::vector<NamedTensor> named;
  Json j;
  ReadOptions ro;
  absl::Status s = WalkPyTree(*root, "", ro, r.heap->size(), &named, &j);
  if (!s.ok()) return s;
  return j.Dump();
}

TEST(PickleTest, AllProtocols) {
  auto want = ParseJson(kExpectedJson);
  ASSERT_TRUE(want.ok());
  for (int p = 0; p < 6; ++p) {
    SCOPED_TRACE(p);
    auto json = ToJson(absl::HexStringToBytes(kProtocols[p]));
    ASSERT_TRUE(json.ok()) << json.status();
    EXPECT_EQ(*json, want->Dump());
  }
}

TEST(PickleTest, EveryTruncationFails) {
  std::string data = absl::HexStringToBytes(kProtocols[4]);
  for (size_t n = 0; n + 1 < data.size(); ++n) {
    EXPECT_FALSE(ToJson(data.substr(0, n)).ok()) << n;
  }
}

TEST(PickleTest, RefusesGlobalsByNameWithOffset) {
  // cos\nsystem\n(S'echo hi'\ntR.
  std::string evil =
      B("\x80\x02"
        "cos\nsystem\n(X\x07\x00\x00\x00echo hitR.");
  auto r = ToJson(evil);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(),
              HasSubstr("refusing global \"os.system\": not in the "
                        "weights-only allowlist (pickle byte 2)"));
  // STACK_GLOBAL too.
  std::string sg =
      B("\x80\x04\x8c\x08"
        "builtins"
        "\x8c\x04"
        "eval\x93.");
  r = ToJson(sg);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("\"builtins.eval\""));
  EXPECT_THAT(r.status().message(), HasSubstr("pickle byte 18"));
  // Python 2 module names are mapped before the check.
  r = ToJson(B("c__builtin__\nset\n(]tR."));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r, R"({"__set__":[]})");
  r = ToJson(B("ccopy_reg\n_reconstructor\n."));
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("\"copyreg._reconstructor\""));
}

TEST(PickleTest, Python2Strings) {
  // SHORT_BINSTRING with a latin-1 byte.
  std::string p =
      B("\x80\x02U\x03"
        "a\xe9z.");
  UnpicklerOptions o;
  EXPECT_FALSE(ToJson(p, o).ok());  // not UTF-8
  o.encoding = StringEncoding::kLatin1;
  auto r = ToJson(p, o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r, "\"a\xc3\xa9z\"");
  o.encoding = StringEncoding::kBytes;
  r = ToJson(p, o);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, R"({"__bytes__":"Yel6"})");
  // Protocol 0 STRING with escapes.
  o.encoding = StringEncoding::kUtf8;
  r = ToJson(B("S'a\\nb'\n."), o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r, "\"a\\nb\"");
}

TEST(PickleTest, MemoAndSharedReferences) {
  // [x, x] where x = [] memoized: h (BINGET) returns the same object.
  auto r =
      ToJson(B("\x80\x02]q\x00(]q\x01h\x01"
               "e."));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r, "[[],[]]");
  EXPECT_FALSE(ToJson(B("\x80\x02h\x05.")).ok());  // missing memo key
}

TEST(PickleTest, StackErrors) {
  EXPECT_FALSE(ToJson(B("a.")).ok());           // APPEND on empty stack
  EXPECT_FALSE(ToJson(B("(N.")).ok());          // STOP with open mark
  EXPECT_FALSE(ToJson(B("NN.")).ok());          // two values
  EXPECT_FALSE(ToJson(B("\x80\x09N.")).ok());   // protocol 9
  EXPECT_FALSE(ToJson(B("\xff.")).ok());        // unknown opcode
  EXPECT_FALSE(ToJson(B("N]\x82\x01.")).ok());  // EXT1
  EXPECT_FALSE(ToJson(B("K\x01]s.")).ok());     // SETITEM on a list
  auto r = ToJson(B("(N."));
  EXPECT_THAT(r.status().message(), HasSubstr("STOP with an open MARK"));
}

TEST(PickleTest, Limits) {
  std::string marks(2000, '(');
  UnpicklerOptions o;
  auto r = ToJson(marks + ".", o);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("MARKs nested deeper than 1000"));
  o.max_string_bytes = 4;
  r = ToJson(std::string("X\x05\x00\x00\x00hello.", 11), o);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("string of 5 bytes, limit is 4"));
  // A huge declared length is refused before reading.
  r = ToJson(std::string("\x8e\xff\xff\xff\xff\xff\xff\xff\x7f.", 10));
  ASSERT_FALSE(r.ok());
}

TEST(PickleTest, DuplicateDictKeysKeepLastValueFirstPosition) {
  // {1: 'a', 2: 'b', 1.0: 'c'} written by hand.
  auto r =
      ToJson(B("}(K\x01X\x01\x00\x00\x00"
               "aK\x02X\x01\x00\x00\x00"
               "b"
               "G\x3f\xf0\x00\x00\x00\x00\x00\x00X\x01\x00\x00\x00"
               "cu."));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r, R"({"__items__":[[1,"c"],[2,"b"]]})");
}

TEST(PickleTest, TypedTreeKeepsWhatTorchLoadReturns) {
  // od = OrderedDict([('k', 1)]); od._metadata = {'': {'version': 1}}
  // pickle.dumps({(1, 'a'): 1, 2: [nan, -inf, -0.0], 'x': {'__y__': od},
  //               's': slice(1, None, 2)}, 2)
  auto r = ToJson(absl::HexStringToBytes(
      "80027d7100284b0158010000006171018671024b014b025d710328477ff80000000000"
      "0047fff00000000000004780000000000000006558010000007871047d710558050000"
      "005f5f795f5f710663636f6c6c656374696f6e730a4f726465726564446963740a7107"
      "2952710858010000006b71094b01737d710a58090000005f6d65746164617461710b7d"
      "710c5800000000710d7d710e580700000076657273696f6e710f4b0173737362735801"
      "000000737110635f5f6275696c74696e5f5f0a736c6963650a71114b014e4b02877112"
      "527113752e"));
  ASSERT_TRUE(r.ok()) << r.status();
  // Int and tuple keys, and a key that looks like a marker, force the pairs
  // form; the OrderedDict keeps its class and its attributes.
  EXPECT_EQ(*r, R"({"__items__":[[{"__tuple__":[1,"a"]},1],)"
                R"([2,[{"__float__":"nan"},{"__float__":"-inf"},-0.0]],)"
                R"(["x",{"__items__":[["__y__",{"__class__":)"
                R"("collections.OrderedDict","k":1,"__state__":)"
                R"({"_metadata":{"":{"version":1}}}}]]}],)"
                R"(["s",{"__slice__":[1,null,2]}]]})");
}

TEST(PickleTest, TensorRebuildWithPersistentLoader) {
  // ('storage', FloatStorage, '0', 'cpu', 6) -> _rebuild_tensor_v2(s, 1,
  // (2, 2), (1, 2), False, OrderedDict())
  std::string p =
      B("\x80\x02"
        "ctorch._utils\n_rebuild_tensor_v2\n("
        "(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x00"
        "0"
        "X\x03\x00\x00\x00"
        "cpuK\x06tQ"
        "K\x01K\x02K\x02\x86K\x01K\x02\x86\x89"
        "ccollections\nOrderedDict\n)R"
        "tR.");
  int calls = 0;
  Unpickler u(p, {},
              [&](Unpickler& un, PyValue* pid) -> absl::StatusOr<PyValue*> {
                ++calls;
                EXPECT_EQ(pid->items.size(), 5u);
                PyValue* s = un.NewValue(PyKind::kStorage);
                s->dtype = DType::kFloat32;
                s->index = 0;
                return s;
              });
  auto root = u.Load();
  ASSERT_TRUE(root.ok()) << root.status();
  EXPECT_EQ(calls, 1);
  ASSERT_EQ((*root)->kind, PyKind::kTensor);
  const PickledTensor& t = u.tensors()[(*root)->index];
  EXPECT_EQ(t.shape, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(t.stride, (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(t.storage_offset, 1);
  EXPECT_EQ(t.extent_bytes, 20u);  // (1 + 1 + 2 + 1) * 4
}

TEST(PickleTest, UnsupportedTensorKindsAreNamed) {
  auto r =
      ToJson(B("\x80\x02"
               "ctorch._utils\n_rebuild_qtensor\n)R."));
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("unsupported: quantized tensor"));
  r =
      ToJson(B("\x80\x02"
               "ctorch._utils\n_rebuild_sparse_tensor\n)R."));
  EXPECT_THAT(r.status().message(), HasSubstr("unsupported: sparse tensor"));
  r =
      ToJson(B("\x80\x02"
               "ctorch._utils\n_rebuild_nested_tensor\n)R."));
  EXPECT_THAT(r.status().message(), HasSubstr("unsupported: nested tensor"));
  r =
      ToJson(B("\x80\x02"
               "ctorch._utils\n_rebuild_meta_tensor_no_storage\n)R."));
  EXPECT_THAT(r.status().message(), HasSubstr("unsupported: meta tensor"));
}

TEST(PickleTest, TorchScriptClassesOnlyInTorchScriptMode) {
  std::string p =
      B("\x80\x02"
        "c__torch__\nM\n)\x81}X\x01\x00\x00\x00"
        "aK\x01sb.");
  EXPECT_FALSE(ToJson(p).ok());
  UnpicklerOptions o;
  o.torchscript = true;
  auto r = ToJson(p, o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r, R"({"__class__":"__torch__.M","a":1})");
}

// PEP 3154 framing. The body of a protocol 4 pickle of [1, 2, 'abc'] (15
// bytes: EMPTY_LIST MEMOIZE MARK BININT1 1 BININT1 2 SHORT_BINUNICODE 'abc'
// MEMOIZE APPENDS STOP), wrapped in FRAMEs of chosen lengths.
const std::string kListBody =
    B("]\x94(K\x01K\x02\x8c\x03"
      "abc\x94"
      "e.");

std::string Frame(uint64_t length) {
  std::string out = B("\x95");
  for (int k = 0; k < 8; ++k)
    out.push_back(static_cast<char>(length >> (8 * k)));
  return out;
}

struct FrameCase {
  const char* name;
  std::string pickle;
  // Empty: loads. Otherwise a substring of our error.
  std::string our_error;
  // What CPython's reference unpickler says.
  std::string cpython_error;
};

std::vector<FrameCase> FrameCases() {
  const std::string proto = B("\x80\x04");
  const std::string exhausted = "pickle exhausted before end of frame";
  const std::string nested =
      "beginning of a new frame before end of current frame";
  // Split kListBody at the opcode boundary after MARK (3 bytes).
  const std::string head = kListBody.substr(0, 3);
  const std::string tail = kListBody.substr(3);
  return {
      {"whole body framed", proto + Frame(15) + kListBody, "", ""},
      // A frame may end at any opcode boundary or right after an opcode
      // byte; what follows is read unframed.
      {"frame ends after an opcode", proto + Frame(12) + kListBody, "", ""},
      {"frame ends after an opcode byte", proto + Frame(8) + kListBody, "", ""},
      {"two consecutive frames",
       proto + Frame(3) + head + Frame(tail.size()) + tail, "", ""},
      {"next FRAME at the very end of the current frame",
       proto + Frame(3 + 9) + head + Frame(tail.size()) + tail, "", ""},
      // SHORT_BINUNICODE at body byte 7 (pickle byte 18) reads its string
      // across the frame's end at body byte 10.
      {"argument straddles the frame end", proto + Frame(10) + kListBody,
       exhausted + ": the opcode reads 3 bytes from byte 20, past the end of "
                   "its frame at byte 21 (pickle byte 18)",
       exhausted},
      {"frame ends between an opcode's reads", proto + Frame(9) + kListBody, "",
       ""},
      {"line straddles the frame end", proto + Frame(3) + B("I12345\n."),
       exhausted + ": the opcode's line from byte 12 runs past the end of "
                   "its frame at byte 14 (pickle byte 11)",
       exhausted},
      {"FRAME inside a frame with bytes left",
       proto + Frame(3 + 9 + 1) + head + Frame(tail.size()) + tail,
       nested + " (which ends at byte 24) (pickle byte 14)", nested},
  };
}

TEST(PickleTest, FramesAreEnforced) {
  for (const FrameCase& c : FrameCases()) {
    SCOPED_TRACE(c.name);
    auto json = ToJson(c.pickle);
    if (c.our_error.empty()) {
      ASSERT_TRUE(json.ok()) << json.status();
      EXPECT_EQ(*json, R"([1,2,"abc"])");
    } else {
      ASSERT_FALSE(json.ok());
      EXPECT_THAT(json.status().message(), HasSubstr(c.our_error));
    }
  }
}

// The same bytes through CPython's reference unpickler (pickle._loads, the
// pure-Python implementation that enforces PEP 3154 frames; the C
// accelerator behind pickle.loads does not check frame boundaries).
TEST(PickleTest, FramesAgreeWithCPython) {
  const char* python = "/usr/bin/python3";
  if (access(python, X_OK) != 0) {
    GTEST_SKIP() << python << " is missing: cannot compare with CPython";
  }
  const char* tmp = getenv("TEST_TMPDIR");
  const std::string path = absl::StrCat(tmp ? tmp : "/tmp", "/frame.pkl");
  for (const FrameCase& c : FrameCases()) {
    SCOPED_TRACE(c.name);
    {
      std::ofstream f(path, std::ios::binary | std::ios::trunc);
      f << c.pickle;
    }
    const std::string command =
        absl::StrCat(python,
                     " -c 'import pickle, sys\n"
                     "try:\n"
                     "    print(\"loaded\", pickle._loads(open(sys.argv[1], "
                     "\"rb\").read()))\n"
                     "except pickle.UnpicklingError as e:\n"
                     "    print(\"refused:\", e)' ",
                     path, " 2>&1");
    FILE* p = popen(command.c_str(), "r");
    ASSERT_NE(p, nullptr);
    std::string output;
    char buffer[256];
    while (size_t n = fread(buffer, 1, sizeof(buffer), p))
      output.append(buffer, n);
    ASSERT_EQ(pclose(p), 0) << output;
    const bool cpython_refuses = output.rfind("refused:", 0) == 0;
    EXPECT_EQ(cpython_refuses, !c.our_error.empty()) << output;
    auto ours = ToJson(c.pickle);
    EXPECT_EQ(cpython_refuses, !ours.ok()) << output << " / " << ours.status();
    if (!c.cpython_error.empty()) {
      EXPECT_THAT(output, HasSubstr(c.cpython_error));
    }
  }
}

TEST(PickleTest, FramedFixturePicklesStillLoad) {
  // Protocols 4 and 5 above are framed (one frame each).
  for (int p = 4; p < 6; ++p) {
    EXPECT_TRUE(ToJson(absl::HexStringToBytes(kProtocols[p])).ok()) << p;
  }
}

// Text travels as protobuf strings and JSON: invalid UTF-8 is refused.
TEST(PickleTest, UnicodeMustBeUtf8) {
  auto r = ToJson(B("\x80\x04\x8c\x02\xff\xfe."));
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(),
              HasSubstr("unicode string is not valid UTF-8 (pickle byte 2)"));
  EXPECT_FALSE(ToJson(B("\x80\x04\x8c\x03\xed\xa0\x80.")).ok());
  EXPECT_FALSE(ToJson(B("V\\ud800\n.")).ok());
  auto ok = ToJson(B("\x80\x04\x8c\x02\xc3\xa9."));
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(*ok, "\"\xc3\xa9\"");
}

// A state that is not a dict is whatever a TorchScript __getstate__ returned:
// never attributes, even when it looks like Python's (dict, slots) pair.
TEST(PickleTest, TorchScriptNonDictStateIsNotAttributes) {
  UnpicklerOptions o;
  o.torchscript = true;
  const std::string pickle =
      B("\x80\x02"
        "c__torch__\nM\n)\x81}X\x01\x00\x00\x00"
        "aK\x01s}X\x01\x00\x00\x00"
        "bK\x02s\x86"
        "b.");
  Unpickler u(pickle, o, nullptr);
  auto root = u.Load();
  ASSERT_TRUE(root.ok()) << root.status();
  EXPECT_EQ((*root)->kind, PyKind::kObject);
  EXPECT_TRUE((*root)->pairs.empty());
  ASSERT_NE((*root)->state, nullptr);
  EXPECT_EQ((*root)->state->kind, PyKind::kTuple);
}

// _rebuild_from_type_v2(f, Tensor, L, {}) where L is that very argument list:
// refused, not recursed into until the stack runs out.
TEST(PickleTest, SelfReferentialRebuildFromTypeIsRefused) {
  auto r =
      ToJson(B("\x80\x02]q\x00("
               "ctorch._tensor\n_rebuild_from_type_v2\n"
               "ctorch\nTensor\nh\x00}e0"
               "ctorch._tensor\n_rebuild_from_type_v2\nh\x00R."));
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(
      r.status().message(),
      HasSubstr("unexpected arguments to "
                "torch._tensor._rebuild_from_type_v2 (pickle byte 101)"));
}

}  // namespace
}  // namespace weightd
