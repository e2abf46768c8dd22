#include "loader/format/pickle.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "loader/common/json.h"
#include "loader/common/status_macros.h"
#include "loader/format/utf8.h"

namespace weightd {
namespace {

// Opcodes, protocols 0-5.
enum : uint8_t {
  kMark = '(',
  kStop = '.',
  kPop = '0',
  kPopMark = '1',
  kDup = '2',
  kFloat = 'F',
  kInt = 'I',
  kBinInt = 'J',
  kBinInt1 = 'K',
  kLong = 'L',
  kBinInt2 = 'M',
  kNone = 'N',
  kPersId = 'P',
  kBinPersId = 'Q',
  kReduce = 'R',
  kString = 'S',
  kBinString = 'T',
  kShortBinString = 'U',
  kUnicode = 'V',
  kBinUnicode = 'X',
  kAppend = 'a',
  kBuild = 'b',
  kGlobal = 'c',
  kDict = 'd',
  kEmptyDict = '}',
  kAppends = 'e',
  kGet = 'g',
  kBinGet = 'h',
  kInst = 'i',
  kLongBinGet = 'j',
  kList = 'l',
  kEmptyList = ']',
  kObj = 'o',
  kPut = 'p',
  kBinPut = 'q',
  kLongBinPut = 'r',
  kSetItem = 's',
  kTuple = 't',
  kEmptyTuple = ')',
  kSetItems = 'u',
  kBinFloat = 'G',
  kProto = 0x80,
  kNewObj = 0x81,
  kExt1 = 0x82,
  kExt2 = 0x83,
  kExt4 = 0x84,
  kTuple1 = 0x85,
  kTuple2 = 0x86,
  kTuple3 = 0x87,
  kNewTrue = 0x88,
  kNewFalse = 0x89,
  kLong1 = 0x8a,
  kLong4 = 0x8b,
  kBinBytes = 'B',
  kShortBinBytes = 'C',
  kShortBinUnicode = 0x8c,
  kBinUnicode8 = 0x8d,
  kBinBytes8 = 0x8e,
  kEmptySet = 0x8f,
  kAddItems = 0x90,
  kFrozenSet = 0x91,
  kNewObjEx = 0x92,
  kStackGlobal = 0x93,
  kMemoize = 0x94,
  kFrame = 0x95,
  kByteArray8 = 0x96,
  kNextBuffer = 0x97,
  kReadOnlyBuffer = 0x98,
};

uint32_t LE32(const char* p) {
  const unsigned char* u = reinterpret_cast<const unsigned char*>(p);
  return static_cast<uint32_t>(u[0]) | (static_cast<uint32_t>(u[1]) << 8) |
         (static_cast<uint32_t>(u[2]) << 16) |
         (static_cast<uint32_t>(u[3]) << 24);
}
uint64_t LE64(const char* p) {
  return static_cast<uint64_t>(LE32(p)) |
         (static_cast<uint64_t>(LE32(p + 4)) << 32);
}

// Decodes UTF-8 into code points (lenient: invalid bytes become U+FFFD).
bool Utf8ToCodePoints(absl::string_view s, std::vector<uint32_t>* out) {
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    int len = c < 0x80             ? 1
              : (c & 0xE0) == 0xC0 ? 2
              : (c & 0xF0) == 0xE0 ? 3
              : (c & 0xF8) == 0xF0 ? 4
                                   : 0;
    if (len == 0 || i + len > s.size()) return false;
    uint32_t cp = len == 1 ? c : c & (0x7F >> len);
    for (int k = 1; k < len; ++k) {
      unsigned char cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    out->push_back(cp);
    i += len;
  }
  return true;
}

// Little-endian two's complement bytes to a decimal string.
std::string BigIntDecimal(absl::string_view le) {
  if (le.empty()) return "0";
  std::vector<uint8_t> mag(le.begin(), le.end());
  bool negative = (mag.back() & 0x80) != 0;
  if (negative) {  // two's complement negate
    int carry = 1;
    for (auto& b : mag) {
      int v = static_cast<uint8_t>(~b) + carry;
      b = static_cast<uint8_t>(v & 0xFF);
      carry = v >> 8;
    }
  }
  std::string digits;
  while (true) {
    bool all_zero = true;
    int rem = 0;
    for (size_t k = mag.size(); k-- > 0;) {
      int cur = rem * 256 + mag[k];
      mag[k] = static_cast<uint8_t>(cur / 10);
      rem = cur % 10;
      if (mag[k] != 0) all_zero = false;
    }
    digits.push_back(static_cast<char>('0' + rem));
    if (all_zero) break;
  }
  if (negative) digits.push_back('-');
  return std::string(digits.rbegin(), digits.rend());
}

std::string PyFloatRepr(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buf[64];
  int precision = 1;
  for (; precision <= 17; ++precision) {
    snprintf(buf, sizeof(buf), "%.*e", precision - 1, v);
    if (strtod(buf, nullptr) == v) break;
  }
  // Python's repr: scientific when exponent < -4 or >= 16.
  int exponent = 0;
  const char* e = strchr(buf, 'e');
  if (e != nullptr) exponent = atoi(e + 1);
  if (exponent < -4 || exponent >= 16) {
    std::string mant(buf, e - buf);
    // drop trailing zeros in mantissa
    if (mant.find('.') != std::string::npos) {
      while (mant.back() == '0') mant.pop_back();
      if (mant.back() == '.') mant.pop_back();
    }
    return absl::StrFormat("%se%c%02d", mant, exponent < 0 ? '-' : '+',
                           std::abs(exponent));
  }
  snprintf(buf, sizeof(buf), "%.*f", std::max(0, precision - 1 - exponent), v);
  std::string s = buf;
  if (s.find('.') != std::string::npos) {
    while (s.back() == '0') s.pop_back();
    if (s.back() == '.') s.push_back('0');
  } else {
    s += ".0";
  }
  return s;
}

std::string PyQuote(absl::string_view s, bool bytes) {
  // Python's repr quoting: single quotes unless the text has ' and no ".
  bool has_single = s.find('\'') != absl::string_view::npos;
  bool has_double = s.find('"') != absl::string_view::npos;
  char q = (has_single && !has_double) ? '"' : '\'';
  std::string out = bytes ? "b" : "";
  out.push_back(q);
  for (unsigned char c : s) {
    if (c == static_cast<unsigned char>(q) || c == '\\') {
      out.push_back('\\');
      out.push_back(static_cast<char>(c));
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7F || (bytes && c >= 0x80)) {
      out += absl::StrFormat("\\x%02x", c);
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  out.push_back(q);
  return out;
}

// Identity of a hashable key for dict de-duplication (Python equality: 1 ==
// 1.0 == True).
absl::StatusOr<std::string> KeyIdentity(const PyValue* v, int depth = 0) {
  if (depth > 64) return absl::InvalidArgumentError("dict key nested too deep");
  switch (v->kind) {
    case PyKind::kNone:
      return std::string("N");
    case PyKind::kBool:
      return absl::StrCat("n", v->b ? 1 : 0);
    case PyKind::kInt:
      return absl::StrCat("n", v->i);
    case PyKind::kBigInt:
      return absl::StrCat("n", v->s);
    case PyKind::kFloat:
      if (std::isfinite(v->f) && v->f == std::floor(v->f) &&
          std::fabs(v->f) < 9e18) {
        return absl::StrCat("n", static_cast<int64_t>(v->f));
      }
      return absl::StrCat("f", PyFloatRepr(v->f));
    case PyKind::kComplex:
      return absl::StrCat("c", PyFloatRepr(v->f), ",", PyFloatRepr(v->f2));
    case PyKind::kStr:
      return absl::StrCat("s", v->s);
    case PyKind::kBytes:
      return absl::StrCat("b", v->s);
    case PyKind::kTuple:
    case PyKind::kFrozenSet: {
      std::string out = v->kind == PyKind::kTuple ? "t(" : "F(";
      for (const PyValue* item : v->items) {
        ASSIGN_OR_RETURN(std::string k, KeyIdentity(item, depth + 1));
        absl::StrAppend(&out, k.size(), ":", k);
      }
      return out + ")";
    }
    case PyKind::kGlobal:
    case PyKind::kDType:
    case PyKind::kDevice:
      return absl::StrCat("g", v->s, static_cast<int>(v->dtype));
    case PyKind::kTensor:
    case PyKind::kObject:
    case PyKind::kStorage:
      return absl::StrFormat("p%p", static_cast<const void*>(v));
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("unhashable dict key of type ", PyTypeName(v)));
  }
}

bool IsInt(const PyValue* v) {
  return v->kind == PyKind::kInt || v->kind == PyKind::kBool;
}
bool IsSeq(const PyValue* v) {
  return v->kind == PyKind::kTuple || v->kind == PyKind::kList;
}

constexpr const char* kTensorTypePrefixes[] = {
    "Double", "Float", "Half", "BFloat16", "Long",         "Int",
    "Short",  "Char",  "Byte", "Bool",     "ComplexFloat", "ComplexDouble"};

bool IsTensorClass(absl::string_view module, absl::string_view name) {
  if (module != "torch" && module != "torch.cuda") return false;
  if (!absl::ConsumeSuffix(&name, "Tensor")) return false;
  for (const char* p : kTensorTypePrefixes) {
    if (name == p) return true;
  }
  return false;
}

constexpr const char* kRebuildFunctions[] = {
    "_rebuild_tensor",
    "_rebuild_tensor_v2",
    "_rebuild_tensor_v3",
    "_rebuild_parameter",
    "_rebuild_parameter_with_state",
    "_rebuild_qtensor",
    "_rebuild_sparse_tensor",
    "_rebuild_sparse_csr_tensor",
    "_rebuild_meta_tensor_no_storage",
    "_rebuild_nested_tensor",
    "_rebuild_wrapper_subclass",
    "_rebuild_device_tensor_from_numpy",
    "_rebuild_device_tensor_from_cpu_tensor",
};

constexpr const char* kPlainGlobals[] = {
    "collections.OrderedDict",
    "collections.Counter",
    "torch.nn.parameter.Parameter",
    "torch.serialization._get_layout",
    "torch.Size",
    "torch.Tensor",
    "torch.device",
    "_codecs.encode",
    "builtins.bytearray",
    "builtins.set",
    "builtins.frozenset",
    "builtins.complex",
    "builtins.slice",
    "torch._tensor._rebuild_from_type_v2",
    "torch._tensor._rebuild_from_type",
    "torch.per_tensor_affine",
    "torch.per_tensor_symmetric",
    "torch.per_channel_affine",
    "torch.per_channel_symmetric",
    "torch.per_channel_affine_float_qparams",
    "torch.strided",
    "torch.sparse_coo",
    "torch.sparse_csr",
    "torch.sparse_csc",
    "torch.sparse_bsr",
    "torch.sparse_bsc",
    "torch._mkldnn",
    "torch.jit._pickle.build_intlist",
    "torch.jit._pickle.build_tensorlist",
    "torch.jit._pickle.build_doublelist",
    "torch.jit._pickle.build_boollist",
    "torch.jit._pickle.build_tensor_from_id",
    "torch.jit._pickle.restore_type_tag",
};

// Python 2 module names (pickle's _compat_pickle.IMPORT_MAPPING, the part that
// matters here).
std::string MapModule(const std::string& module) {
  if (module == "__builtin__") return "builtins";
  if (module == "copy_reg") return "copyreg";
  if (module == "UserDict") return "collections";
  if (module == "torch.tensor") return "torch._tensor";
  return module;
}

}  // namespace

std::string PyTypeName(const PyValue* v) {
  switch (v->kind) {
    case PyKind::kNone:
      return "NoneType";
    case PyKind::kBool:
      return "bool";
    case PyKind::kInt:
    case PyKind::kBigInt:
      return "int";
    case PyKind::kFloat:
      return "float";
    case PyKind::kComplex:
      return "complex";
    case PyKind::kStr:
      return "str";
    case PyKind::kBytes:
      return "bytes";
    case PyKind::kByteArray:
      return "bytearray";
    case PyKind::kTuple:
      return "tuple";
    case PyKind::kList:
      return "list";
    case PyKind::kDict:
      return "dict";
    case PyKind::kSet:
      return "set";
    case PyKind::kFrozenSet:
      return "frozenset";
    case PyKind::kGlobal:
      return v->s;
    case PyKind::kObject:
      return v->s;
    case PyKind::kTensor:
      return "torch.Tensor";
    case PyKind::kStorage:
      return "torch.Storage";
    case PyKind::kDevice:
      return "torch.device";
    case PyKind::kDType:
      return "torch.dtype";
    case PyKind::kSlice:
      return "slice";
  }
  return "object";
}

std::string PyStr(const PyValue* v) {
  switch (v->kind) {
    case PyKind::kNone:
      return "None";
    case PyKind::kBool:
      return v->b ? "True" : "False";
    case PyKind::kInt:
      return absl::StrCat(v->i);
    case PyKind::kBigInt:
      return v->s;
    case PyKind::kFloat:
      return PyFloatRepr(v->f);
    case PyKind::kStr:
      return v->s;
    case PyKind::kBytes:
      return PyQuote(v->s, true);
    case PyKind::kByteArray:
      return absl::StrCat("bytearray(", PyQuote(v->s, true), ")");
    case PyKind::kComplex: {
      auto part = [](double d) {
        std::string r = PyFloatRepr(d);
        if (absl::EndsWith(r, ".0")) r.resize(r.size() - 2);
        return r;
      };
      if (v->f == 0 && !std::signbit(v->f)) return part(v->f2) + "j";
      std::string im = part(v->f2);
      if (im[0] != '-') im = "+" + im;
      return absl::StrCat("(", part(v->f), im, "j)");
    }
    case PyKind::kTuple: {
      std::vector<std::string> parts;
      for (const PyValue* item : v->items) {
        parts.push_back(item->kind == PyKind::kStr ? PyQuote(item->s, false)
                                                   : PyStr(item));
      }
      if (parts.size() == 1) return absl::StrCat("(", parts[0], ",)");
      return absl::StrCat("(", absl::StrJoin(parts, ", "), ")");
    }
    case PyKind::kDType:
      return absl::StrCat("torch.", DTypeName(v->dtype));
    case PyKind::kDevice:
      return v->s;
    case PyKind::kGlobal:
      return absl::StrCat("<", v->s, ">");
    default:
      return absl::StrCat("<", PyTypeName(v), ">");
  }
}

Unpickler::Unpickler(absl::string_view data, UnpicklerOptions options,
                     PersistentLoader persistent_loader)
    : data_(data),
      options_(std::move(options)),
      persistent_loader_(std::move(persistent_loader)),
      heap_(std::make_shared<PyHeap>()) {}

PyValue* Unpickler::NewValue(PyKind kind) {
  PyValue* v = heap_->New();
  v->kind = kind;
  ++values_;
  return v;
}

PickleResult Unpickler::Release() {
  PickleResult r;
  r.heap = heap_;
  r.tensors = std::move(tensors_);
  r.bytes_consumed = pos_;
  return r;
}

absl::Status Unpickler::Error(size_t at, absl::string_view what) const {
  return absl::InvalidArgumentError(
      absl::StrCat(options_.context, options_.context.empty() ? "" : ": ", what,
                   " (pickle byte ", at, ")"));
}

absl::Status Unpickler::CheckFrameHolds(size_t n) {
  if (!in_frame_ || n == 0) return absl::OkStatus();
  if (pos_ == frame_end_) {
    in_frame_ = false;  // bytes after an exhausted frame need no frame
    return absl::OkStatus();
  }
  if (n > frame_end_ - pos_) {
    return Error(
        op_pos_,
        absl::StrCat("pickle exhausted before end of frame: the "
                     "opcode reads ",
                     n, " bytes from byte ", pos_,
                     ", past the end of its frame at byte ", frame_end_));
  }
  return absl::OkStatus();
}

absl::Status Unpickler::ReadBytes(size_t n, absl::string_view* out) {
  RETURN_IF_ERROR(CheckFrameHolds(n));
  if (n > data_.size() - pos_) {
    return Error(pos_,
                 absl::StrCat("pickle truncated: needs ", n, " more bytes, ",
                              data_.size() - pos_, " left"));
  }
  *out = data_.substr(pos_, n);
  pos_ += n;
  return absl::OkStatus();
}

absl::Status Unpickler::ReadLine(absl::string_view* out) {
  if (in_frame_ && pos_ == frame_end_) in_frame_ = false;
  size_t nl = data_.find('\n', pos_);
  if (in_frame_ && (nl == absl::string_view::npos || nl >= frame_end_)) {
    return Error(op_pos_,
                 absl::StrCat("pickle exhausted before end of frame: the "
                              "opcode's line from byte ",
                              pos_, " runs past the end of its frame at byte ",
                              frame_end_));
  }
  if (nl == absl::string_view::npos) {
    return Error(pos_, "pickle truncated: missing end of line");
  }
  *out = data_.substr(pos_, nl - pos_);
  pos_ = nl + 1;
  return absl::OkStatus();
}

absl::Status Unpickler::Push(PyValue* v, size_t at) {
  if (stack_.size() >= options_.max_stack) {
    return Error(at,
                 absl::StrCat("pickle stack deeper than ", options_.max_stack));
  }
  if (values_ > options_.max_values) {
    return Error(
        at, absl::StrCat("more than ", options_.max_values, " pickle values"));
  }
  stack_.push_back(v);
  return absl::OkStatus();
}

absl::StatusOr<PyValue*> Unpickler::Pop(size_t at) {
  size_t floor = marks_.empty() ? 0 : marks_.back();
  if (stack_.size() <= floor) return Error(at, "pickle stack underflow");
  PyValue* v = stack_.back();
  stack_.pop_back();
  return v;
}

absl::StatusOr<PyValue*> Unpickler::Top(size_t at) {
  size_t floor = marks_.empty() ? 0 : marks_.back();
  if (stack_.size() <= floor) return Error(at, "pickle stack underflow");
  return stack_.back();
}

absl::StatusOr<std::vector<PyValue*>> Unpickler::PopMark(size_t at) {
  if (marks_.empty()) return Error(at, "no MARK on the pickle stack");
  size_t m = marks_.back();
  marks_.pop_back();
  std::vector<PyValue*> items(stack_.begin() + m, stack_.end());
  stack_.resize(m);
  return items;
}

absl::Status Unpickler::MemoPut(uint64_t id, PyValue* v, size_t at) {
  if (id < memo_vec_.size()) {
    if (memo_vec_[id] == nullptr) ++memo_count_;
    memo_vec_[id] = v;
    return absl::OkStatus();
  }
  if (id < memo_vec_.size() + 4096) {
    memo_vec_.resize(id + 1, nullptr);
    memo_vec_[id] = v;
    ++memo_count_;
    return absl::OkStatus();
  }
  if (memo_map_.size() >= options_.max_memo) {
    return Error(at, "too many memo entries");
  }
  if (memo_map_.insert_or_assign(id, v).second) ++memo_count_;
  return absl::OkStatus();
}

absl::StatusOr<PyValue*> Unpickler::MemoGet(uint64_t id, size_t at) {
  if (id < memo_vec_.size() && memo_vec_[id] != nullptr) return memo_vec_[id];
  auto it = memo_map_.find(id);
  if (it != memo_map_.end()) return it->second;
  return Error(at, absl::StrCat("memo key ", id, " not found"));
}

absl::StatusOr<PyValue*> Unpickler::MakeInt(absl::string_view text, size_t at) {
  text = absl::StripAsciiWhitespace(text);
  if (absl::EndsWith(text, "L")) text.remove_suffix(1);
  int64_t v;
  if (absl::SimpleAtoi(text, &v)) {
    PyValue* r = NewValue(PyKind::kInt);
    r->i = v;
    return r;
  }
  absl::string_view digits = text;
  absl::ConsumePrefix(&digits, "-");
  absl::ConsumePrefix(&digits, "+");
  if (digits.empty() || digits.size() > 5000 ||
      !std::all_of(digits.begin(), digits.end(),
                   [](char c) { return c >= '0' && c <= '9'; })) {
    return Error(at, absl::StrCat("invalid integer literal \"",
                                  text.substr(0, 40), "\""));
  }
  PyValue* r = NewValue(PyKind::kBigInt);
  r->s = std::string(text);
  if (absl::StartsWith(r->s, "+")) r->s.erase(0, 1);
  return r;
}

absl::StatusOr<PyValue*> Unpickler::DecodePy2String(absl::string_view raw) {
  switch (options_.encoding) {
    case StringEncoding::kBytes: {
      PyValue* v = NewValue(PyKind::kBytes);
      v->s = std::string(raw);
      return v;
    }
    case StringEncoding::kLatin1: {
      PyValue* v = NewValue(PyKind::kStr);
      for (unsigned char c : raw) AppendUtf8(c, &v->s);
      return v;
    }
    case StringEncoding::kUtf8:
    default: {
      if (!IsValidUtf8(raw)) {
        return absl::InvalidArgumentError(
            "Python 2 string is not valid UTF-8 (try the latin1 or bytes "
            "encoding)");
      }
      PyValue* v = NewValue(PyKind::kStr);
      v->s = std::string(raw);
      return v;
    }
  }
}

absl::StatusOr<PyValue*> Unpickler::MakeGlobal(std::string module,
                                               std::string name, size_t at) {
  module = MapModule(module);
  if (module == "builtins" && name == "unicode") name = "str";
  std::string full = absl::StrCat(module, ".", name);
  auto global = [&]() {
    PyValue* v = NewValue(PyKind::kGlobal);
    v->s = full;
    return v;
  };
  if (module == "torch") {
    auto dtype = DTypeFromName(name);
    if (dtype.ok()) {
      PyValue* v = NewValue(PyKind::kDType);
      v->dtype = *dtype;
      v->s = full;
      return v;
    }
  }
  if ((module == "torch" || module == "torch.cuda" ||
       module == "torch.storage") &&
      absl::EndsWith(name, "Storage")) {
    if (name == "UntypedStorage" || name == "TypedStorage" ||
        DTypeFromStorageClass(name).ok()) {
      return global();
    }
  }
  if (IsTensorClass(module, name)) return global();
  if (module == "torch._utils") {
    for (const char* f : kRebuildFunctions) {
      if (name == f) return global();
    }
  }
  for (const char* g : kPlainGlobals) {
    if (full == g) return global();
  }
  if (options_.torchscript && absl::StartsWith(module, "__torch__")) {
    return global();
  }
  return Error(at, absl::StrCat("refusing global \"", full,
                                "\": not in the weights-only allowlist"));
}

absl::Status Unpickler::SetItem(PyValue* dict, PyValue* key, PyValue* value,
                                size_t at) {
  if (dict->kind != PyKind::kDict) {
    return Error(at, absl::StrCat("SETITEM on a ", PyTypeName(dict),
                                  " (only dicts allowed)"));
  }
  auto id = KeyIdentity(key);
  if (!id.ok()) return Error(at, id.status().message());
  auto& index = dict_index_[dict];
  auto it = index.find(*id);
  if (it != index.end()) {
    dict->pairs[it->second].second = value;
    return absl::OkStatus();
  }
  index.emplace(std::move(*id), dict->pairs.size());
  dict->pairs.emplace_back(key, value);
  return absl::OkStatus();
}

absl::StatusOr<PyValue*> Unpickler::RebuildTensor(
    const std::string& fn, const std::vector<PyValue*>& args, size_t at) {
  auto unsupported = [&](absl::string_view what) {
    return Error(at, absl::StrCat("unsupported: ", what, " (", fn, ")"));
  };
  if (fn == "_rebuild_qtensor") return unsupported("quantized tensor");
  if (fn == "_rebuild_sparse_tensor" || fn == "_rebuild_sparse_csr_tensor") {
    return unsupported("sparse tensor");
  }
  if (fn == "_rebuild_meta_tensor_no_storage") {
    return unsupported("meta tensor without storage");
  }
  if (fn == "_rebuild_nested_tensor") return unsupported("nested tensor");
  if (fn == "_rebuild_wrapper_subclass") {
    return unsupported("tensor wrapper subclass");
  }
  if (fn == "_rebuild_device_tensor_from_numpy" ||
      fn == "_rebuild_device_tensor_from_cpu_tensor") {
    return unsupported("tensor on a storage-less device (xla/mtia/numpy)");
  }
  if (fn == "_rebuild_parameter" || fn == "_rebuild_parameter_with_state") {
    size_t want = fn == "_rebuild_parameter" ? 3 : 4;
    if (args.size() != want || args[0]->kind != PyKind::kTensor ||
        !IsInt(args[1])) {
      return Error(at, absl::StrCat(fn, " expects (tensor, requires_grad, ",
                                    "hooks", want == 4 ? ", state)" : ")"));
    }
    PickledTensor t = tensors_[args[0]->index];
    t.is_parameter = true;
    t.requires_grad = args[1]->kind == PyKind::kBool ? args[1]->b : args[1]->i;
    PyValue* v = NewValue(PyKind::kTensor);
    v->index = static_cast<int64_t>(tensors_.size());
    v->b = true;  // a torch.nn.Parameter
    tensors_.push_back(std::move(t));
    return v;
  }
  // _rebuild_tensor(storage, offset, size, stride)
  // _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks
  //                    [, metadata])
  // _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks,
  //                    dtype [, metadata])
  size_t min_args = fn == "_rebuild_tensor"      ? 4
                    : fn == "_rebuild_tensor_v2" ? 6
                                                 : 7;
  size_t max_args = fn == "_rebuild_tensor" ? 4 : min_args + 1;
  if (args.size() < min_args || args.size() > max_args) {
    return Error(at,
                 absl::StrCat(fn, " called with ", args.size(), " arguments"));
  }
  const PyValue* storage = args[0];
  if (storage->kind != PyKind::kStorage) {
    return Error(at, absl::StrCat(fn, ": first argument is a ",
                                  PyTypeName(storage), ", not a storage"));
  }
  PickledTensor t;
  t.pickle_offset = at;
  t.storage = storage->index;
  t.dtype = storage->dtype;
  if (fn == "_rebuild_tensor_v3") {
    if (args[6]->kind != PyKind::kDType) {
      return Error(at, "_rebuild_tensor_v3: dtype argument is not a dtype");
    }
    t.dtype = args[6]->dtype;
  }
  if (args[1]->kind != PyKind::kInt || args[1]->i < 0) {
    return Error(at, absl::StrCat(fn,
                                  ": storage offset is not a non-negative "
                                  "int"));
  }
  t.storage_offset = args[1]->i;
  const PyValue* size = args[2];
  const PyValue* stride = args[3];
  if (!IsSeq(size) || !IsSeq(stride)) {
    return Error(at, absl::StrCat(fn, ": size and stride must be tuples"));
  }
  if (size->items.size() != stride->items.size()) {
    return Error(at, absl::StrCat(fn, ": size has ", size->items.size(),
                                  " dims, stride ", stride->items.size()));
  }
  if (size->items.size() > options_.max_dims) {
    return Error(at, absl::StrCat(fn, ": ", size->items.size(),
                                  " dims, limit is ", options_.max_dims));
  }
  uint64_t last = 0;  // element index of the last element touched
  bool empty = false;
  for (size_t d = 0; d < size->items.size(); ++d) {
    const PyValue* n = size->items[d];
    const PyValue* s = stride->items[d];
    if (n->kind != PyKind::kInt || s->kind != PyKind::kInt || n->i < 0 ||
        s->i < 0) {
      return Error(at, absl::StrCat(fn,
                                    ": size/stride entries must be "
                                    "non-negative ints"));
    }
    t.shape.push_back(n->i);
    t.stride.push_back(s->i);
    if (n->i == 0) empty = true;
  }
  // Overflow checks on numel and on the extent of the view.
  uint64_t numel = 1;
  for (int64_t n : t.shape) {
    if (__builtin_mul_overflow(numel, static_cast<uint64_t>(n), &numel) ||
        numel > static_cast<uint64_t>(INT64_MAX)) {
      return Error(at, absl::StrCat(fn, ": number of elements overflows"));
    }
  }
  if (!empty) {
    for (size_t d = 0; d < t.shape.size(); ++d) {
      uint64_t span;
      if (__builtin_mul_overflow(static_cast<uint64_t>(t.shape[d] - 1),
                                 static_cast<uint64_t>(t.stride[d]), &span) ||
          __builtin_add_overflow(last, span, &last)) {
        return Error(at, absl::StrCat(fn, ": tensor extent overflows"));
      }
    }
    uint64_t end;
    if (__builtin_add_overflow(last, static_cast<uint64_t>(t.storage_offset),
                               &end) ||
        __builtin_add_overflow(end, uint64_t{1}, &end) ||
        __builtin_mul_overflow(end, static_cast<uint64_t>(DTypeSize(t.dtype)),
                               &t.extent_bytes)) {
      return Error(at, absl::StrCat(fn, ": tensor extent overflows"));
    }
  }
  if (fn != "_rebuild_tensor") {
    t.requires_grad = args[4]->kind == PyKind::kBool  ? args[4]->b
                      : args[4]->kind == PyKind::kInt ? args[4]->i != 0
                                                      : false;
    const PyValue* hooks = args[5];
    if (hooks->kind == PyKind::kDict && !hooks->pairs.empty()) {
      // torch ignores backward hooks on load ("Don't serialize hooks").
    }
    size_t meta_index = fn == "_rebuild_tensor_v2" ? 6 : 7;
    if (args.size() > meta_index) {
      const PyValue* meta = args[meta_index];
      if (meta->kind == PyKind::kDict) {
        for (const auto& kv : meta->pairs) {
          bool on = kv.second->kind == PyKind::kBool  ? kv.second->b
                    : kv.second->kind == PyKind::kInt ? kv.second->i != 0
                                                      : false;
          if (kv.first->kind == PyKind::kStr && kv.first->s == "conj") {
            t.is_conj = on;
          } else if (kv.first->kind == PyKind::kStr && kv.first->s == "neg") {
            t.is_neg = on;
          }
        }
      } else if (meta->kind != PyKind::kNone) {
        return Error(at,
                     absl::StrCat(fn, ": metadata is a ", PyTypeName(meta)));
      }
    }
  }
  PyValue* v = NewValue(PyKind::kTensor);
  v->index = static_cast<int64_t>(tensors_.size());
  tensors_.push_back(std::move(t));
  return v;
}

absl::StatusOr<PyValue*> Unpickler::Call(PyValue* callable, PyValue* args,
                                         size_t at) {
  if (callable->kind != PyKind::kGlobal) {
    return Error(at, absl::StrCat("cannot call a ", PyTypeName(callable)));
  }
  if (args->kind != PyKind::kTuple && args->kind != PyKind::kList) {
    return Error(at, absl::StrCat("arguments of ", callable->s, " are a ",
                                  PyTypeName(args), ", not a tuple"));
  }
  const std::string& fn = callable->s;
  const std::vector<PyValue*>& a = args->items;
  auto bad_args = [&]() {
    return Error(at, absl::StrCat("unexpected arguments to ", fn));
  };
  if (absl::StartsWith(fn, "torch._utils.")) {
    return RebuildTensor(fn.substr(13), a, at);
  }
  if (fn == "collections.OrderedDict" || fn == "collections.Counter") {
    PyValue* d = NewValue(PyKind::kDict);
    d->s = fn;  // not a plain dict: torch.load gives this class
    if (a.empty()) return d;
    if (a.size() != 1) return bad_args();
    if (a[0]->kind == PyKind::kDict) {
      for (auto& kv : a[0]->pairs)
        RETURN_IF_ERROR(SetItem(d, kv.first, kv.second, at));
      return d;
    }
    if (!IsSeq(a[0])) return bad_args();
    for (PyValue* pair : a[0]->items) {
      if (!IsSeq(pair) || pair->items.size() != 2) return bad_args();
      RETURN_IF_ERROR(SetItem(d, pair->items[0], pair->items[1], at));
    }
    return d;
  }
  if (fn == "builtins.set" || fn == "builtins.frozenset") {
    PyValue* s =
        NewValue(fn == "builtins.set" ? PyKind::kSet : PyKind::kFrozenSet);
    if (a.empty()) return s;
    if (a.size() != 1 || !(IsSeq(a[0]) || a[0]->kind == PyKind::kSet ||
                           a[0]->kind == PyKind::kFrozenSet)) {
      return bad_args();
    }
    s->items = a[0]->items;
    return s;
  }
  if (fn == "builtins.complex") {
    PyValue* c = NewValue(PyKind::kComplex);
    auto num = [](const PyValue* v, double* out) {
      if (v->kind == PyKind::kFloat) {
        *out = v->f;
      } else if (v->kind == PyKind::kInt) {
        *out = static_cast<double>(v->i);
      } else if (v->kind == PyKind::kBool) {
        *out = v->b;
      } else {
        return false;
      }
      return true;
    };
    if (a.size() > 2 || (a.size() >= 1 && !num(a[0], &c->f)) ||
        (a.size() == 2 && !num(a[1], &c->f2))) {
      return bad_args();
    }
    return c;
  }
  if (fn == "builtins.slice") {
    if (a.empty() || a.size() > 3) return bad_args();
    PyValue* s = NewValue(PyKind::kSlice);
    s->items = a;
    return s;
  }
  if (fn == "builtins.bytearray" || fn == "_codecs.encode") {
    PyValue* b =
        NewValue(fn == "_codecs.encode" ? PyKind::kBytes : PyKind::kByteArray);
    if (a.empty() && fn == "builtins.bytearray") return b;
    if (a.size() == 1 &&
        (a[0]->kind == PyKind::kBytes || a[0]->kind == PyKind::kByteArray)) {
      b->s = a[0]->s;
      return b;
    }
    if (a.size() < 1 || a.size() > 2 || a[0]->kind != PyKind::kStr ||
        (a.size() == 2 && a[1]->kind != PyKind::kStr)) {
      return bad_args();
    }
    std::string enc = a.size() == 2 ? absl::AsciiStrToLower(a[1]->s) : "utf-8";
    if (enc == "utf-8" || enc == "utf8") {
      b->s = a[0]->s;
      return b;
    }
    if (enc != "latin1" && enc != "latin-1" && enc != "iso-8859-1") {
      return Error(at,
                   absl::StrCat(fn, ": unsupported encoding \"", enc, "\""));
    }
    std::vector<uint32_t> cps;
    if (!Utf8ToCodePoints(a[0]->s, &cps)) return bad_args();
    b->s.reserve(cps.size());
    for (uint32_t cp : cps) {
      if (cp > 0xFF) return Error(at, "latin-1 encode of a code point > 255");
      b->s.push_back(static_cast<char>(cp));
    }
    return b;
  }
  if (fn == "torch.Size") {
    PyValue* t = NewValue(PyKind::kTuple);
    t->s = fn;
    if (a.empty()) return t;
    if (a.size() != 1 || !IsSeq(a[0])) return bad_args();
    for (const PyValue* d : a[0]->items) {
      if (d->kind != PyKind::kInt) return bad_args();
    }
    t->items = a[0]->items;
    return t;
  }
  if (fn == "torch.device") {
    PyValue* d = NewValue(PyKind::kDevice);
    if (a.size() == 1 && a[0]->kind == PyKind::kStr) {
      d->s = a[0]->s;
    } else if (a.size() == 2 && a[0]->kind == PyKind::kStr &&
               a[1]->kind == PyKind::kInt) {
      d->s = absl::StrCat(a[0]->s, ":", a[1]->i);
    } else if (a.size() == 2 && a[0]->kind == PyKind::kStr &&
               a[1]->kind == PyKind::kNone) {
      d->s = a[0]->s;
    } else {
      return bad_args();
    }
    return d;
  }
  if (fn == "torch.serialization._get_layout") {
    if (a.size() != 1 || a[0]->kind != PyKind::kStr) return bad_args();
    PyValue* g = NewValue(PyKind::kGlobal);
    g->s = a[0]->s;
    return g;
  }
  if (fn == "torch._tensor._rebuild_from_type_v2" ||
      fn == "torch._tensor._rebuild_from_type") {
    if (a.size() != 4 || a[1]->kind != PyKind::kGlobal || !IsSeq(a[2])) {
      return bad_args();
    }
    const std::string& type = a[1]->s;
    if (type != "torch.Tensor" && type != "torch.nn.parameter.Parameter") {
      return Error(at, absl::StrCat("unsupported: tensor subclass ", type));
    }
    ASSIGN_OR_RETURN(PyValue * r, Call(a[0], a[2], at));
    if (r->kind != PyKind::kTensor) return bad_args();
    if (type == "torch.nn.parameter.Parameter") {
      tensors_[r->index].is_parameter = true;
      r->b = true;
    }
    return r;
  }
  if (fn == "torch.nn.parameter.Parameter") {
    if (a.empty() || a.size() > 2 || a[0]->kind != PyKind::kTensor) {
      return bad_args();
    }
    PickledTensor t = tensors_[a[0]->index];
    t.is_parameter = true;
    t.requires_grad = a.size() < 2                  ? true
                      : a[1]->kind == PyKind::kBool ? a[1]->b
                                                    : a[1]->i != 0;
    PyValue* v = NewValue(PyKind::kTensor);
    v->index = static_cast<int64_t>(tensors_.size());
    v->b = true;  // a torch.nn.Parameter
    tensors_.push_back(std::move(t));
    return v;
  }
  if (absl::StartsWith(fn, "torch.jit._pickle.")) {
    absl::string_view helper = absl::string_view(fn).substr(18);
    if (helper == "build_tensor_from_id") {
      return Error(at, "unsupported: tensor table references (RPC pickles)");
    }
    if (helper == "restore_type_tag") {
      if (a.size() != 2) return bad_args();
      return a[0];
    }
    if (a.size() != 1 || !IsSeq(a[0])) return bad_args();
    PyValue* l = NewValue(PyKind::kList);
    l->items = a[0]->items;
    return l;
  }
  size_t dot = fn.rfind('.');
  if (IsTensorClass(fn.substr(0, dot), fn.substr(dot + 1)) ||
      fn == "torch.Tensor" || absl::StartsWith(fn, "__torch__")) {
    if (!a.empty() && !absl::StartsWith(fn, "__torch__")) {
      return Error(at, absl::StrCat("unsupported: legacy constructor ", fn,
                                    " with arguments"));
    }
    PyValue* o = NewValue(PyKind::kObject);
    o->s = fn;
    return o;
  }
  return Error(at, absl::StrCat(fn, " is not callable"));
}

absl::Status Unpickler::Build(PyValue* inst, PyValue* state, size_t at) {
  switch (inst->kind) {
    case PyKind::kDict:
      inst->state = state;  // OrderedDict attributes (state_dict _metadata)
      return absl::OkStatus();
    case PyKind::kTensor:
      return absl::OkStatus();  // Parameter/tensor Python attributes: ignored
    case PyKind::kObject: {
      inst->state = state;
      bool tensor_class = !absl::StartsWith(inst->s, "__torch__");
      if (tensor_class) {
        // Legacy tensor: state = (storage, offset, size, stride[, ...]).
        if (!IsSeq(state) || state->items.size() < 4) {
          return Error(at, absl::StrCat("unexpected state for ", inst->s));
        }
        std::vector<PyValue*> args(state->items.begin(),
                                   state->items.begin() + 4);
        ASSIGN_OR_RETURN(PyValue * t,
                         RebuildTensor("_rebuild_tensor", args, at));
        inst->kind = PyKind::kTensor;
        inst->index = t->index;
        return absl::OkStatus();
      }
      // TorchScript objects: torch's pickler writes the attribute dict, or
      // for a class with __getstate__/__setstate__ whatever __getstate__
      // returned, which only its __setstate__ (code) can interpret. Only the
      // dict becomes attributes; any other state stays in `state` for the
      // reader to refuse where it matters.
      if (state->kind == PyKind::kDict) {
        for (auto& kv : state->pairs) inst->pairs.push_back(kv);
      }
      return absl::OkStatus();
    }
    default:
      return Error(
          at, absl::StrCat("BUILD on a ", PyTypeName(inst), " is not allowed"));
  }
}

absl::StatusOr<PyValue*> Unpickler::Load() {
  stack_.clear();
  marks_.clear();
  in_frame_ = false;  // each pickle of a stream starts unframed
  while (true) {
    if (pos_ >= data_.size()) {
      return Error(pos_, "pickle truncated: no STOP opcode");
    }
    if (in_frame_ && pos_ == frame_end_) in_frame_ = false;
    size_t op_pos = pos_;
    op_pos_ = op_pos;
    uint8_t op = static_cast<uint8_t>(data_[pos_++]);
    bool stop = false;
    RETURN_IF_ERROR(Step(op, op_pos, &stop));
    if (stop) {
      if (!marks_.empty()) return Error(op_pos, "STOP with an open MARK");
      if (stack_.size() != 1) {
        return Error(op_pos, absl::StrCat("STOP with ", stack_.size(),
                                          " values on the stack"));
      }
      PyValue* root = stack_.back();
      stack_.clear();
      memo_vec_.clear();
      memo_map_.clear();
      memo_count_ = 0;
      return root;
    }
  }
}

absl::Status Unpickler::Step(uint8_t op, size_t at, bool* stop) {
  absl::string_view raw;
  switch (op) {
    case kProto: {
      RETURN_IF_ERROR(ReadBytes(1, &raw));
      protocol_ = static_cast<uint8_t>(raw[0]);
      if (protocol_ > 5) {
        return Error(at,
                     absl::StrCat("unsupported pickle protocol ", protocol_));
      }
      return absl::OkStatus();
    }
    case kFrame: {
      RETURN_IF_ERROR(ReadBytes(8, &raw));
      uint64_t n = LE64(raw.data());
      if (in_frame_ && pos_ < frame_end_) {
        return Error(at, absl::StrCat("beginning of a new frame before end "
                                      "of current frame (which ends at byte ",
                                      frame_end_, ")"));
      }
      if (n > data_.size() - pos_) return Error(at, "FRAME runs past the data");
      in_frame_ = true;
      frame_end_ = pos_ + n;
      return absl::OkStatus();
    }
    case kStop:
      *stop = true;
      return absl::OkStatus();
    case kMark:
      if (marks_.size() >= options_.max_mark_depth) {
        return Error(at, absl::StrCat("MARKs nested deeper than ",
                                      options_.max_mark_depth));
      }
      marks_.push_back(stack_.size());
      return absl::OkStatus();
    case kPop:
      if (stack_.size() == (marks_.empty() ? 0 : marks_.back()) &&
          !marks_.empty()) {
        marks_.pop_back();
        return absl::OkStatus();
      }
      return Pop(at).status();
    case kPopMark:
      return PopMark(at).status();
    case kDup: {
      ASSIGN_OR_RETURN(PyValue * v, Top(at));
      return Push(v, at);
    }
    case kNone:
      return Push(NewValue(PyKind::kNone), at);
    case kNewTrue:
    case kNewFalse: {
      PyValue* v = NewValue(PyKind::kBool);
      v->b = op == kNewTrue;
      return Push(v, at);
    }
    case kInt: {
      RETURN_IF_ERROR(ReadLine(&raw));
      if (raw == "01" || raw == "00") {
        PyValue* v = NewValue(PyKind::kBool);
        v->b = raw == "01";
        return Push(v, at);
      }
      ASSIGN_OR_RETURN(PyValue * v, MakeInt(raw, at));
      return Push(v, at);
    }
    case kLong: {
      RETURN_IF_ERROR(ReadLine(&raw));
      ASSIGN_OR_RETURN(PyValue * v, MakeInt(raw, at));
      return Push(v, at);
    }
    case kBinInt:
    case kBinInt1:
    case kBinInt2: {
      size_t n = op == kBinInt ? 4 : op == kBinInt1 ? 1 : 2;
      RETURN_IF_ERROR(ReadBytes(n, &raw));
      PyValue* v = NewValue(PyKind::kInt);
      const unsigned char* u =
          reinterpret_cast<const unsigned char*>(raw.data());
      if (op == kBinInt) {
        v->i = static_cast<int32_t>(LE32(raw.data()));
      } else if (op == kBinInt1) {
        v->i = u[0];
      } else {
        v->i = u[0] | (u[1] << 8);
      }
      return Push(v, at);
    }
    case kLong1:
    case kLong4: {
      uint64_t n;
      if (op == kLong1) {
        RETURN_IF_ERROR(ReadBytes(1, &raw));
        n = static_cast<uint8_t>(raw[0]);
      } else {
        RETURN_IF_ERROR(ReadBytes(4, &raw));
        int32_t len = static_cast<int32_t>(LE32(raw.data()));
        if (len < 0) return Error(at, "LONG4 with negative length");
        n = static_cast<uint64_t>(len);
      }
      if (n > 4096) return Error(at, absl::StrCat("integer of ", n, " bytes"));
      RETURN_IF_ERROR(ReadBytes(n, &raw));
      if (n <= 8) {
        uint64_t u = 0;
        for (size_t k = 0; k < n; ++k) {
          u |= static_cast<uint64_t>(static_cast<uint8_t>(raw[k])) << (8 * k);
        }
        if (n > 0 && n < 8 && (static_cast<uint8_t>(raw[n - 1]) & 0x80)) {
          u |= ~uint64_t{0} << (8 * n);  // sign-extend
        }
        PyValue* v = NewValue(PyKind::kInt);
        v->i = static_cast<int64_t>(u);
        return Push(v, at);
      }
      PyValue* v = NewValue(PyKind::kBigInt);
      v->s = BigIntDecimal(raw);
      return Push(v, at);
    }
    case kFloat: {
      RETURN_IF_ERROR(ReadLine(&raw));
      std::string text(raw);
      char* end = nullptr;
      double d = strtod(text.c_str(), &end);
      if (text.empty() || end != text.c_str() + text.size()) {
        return Error(at, "invalid FLOAT literal");
      }
      PyValue* v = NewValue(PyKind::kFloat);
      v->f = d;
      return Push(v, at);
    }
    case kBinFloat: {
      RETURN_IF_ERROR(ReadBytes(8, &raw));
      uint64_t bits = 0;
      for (int k = 0; k < 8; ++k) {
        bits = (bits << 8) | static_cast<uint8_t>(raw[k]);  // big-endian
      }
      PyValue* v = NewValue(PyKind::kFloat);
      memcpy(&v->f, &bits, 8);
      return Push(v, at);
    }
    case kBinUnicode:
    case kShortBinUnicode:
    case kBinUnicode8:
    case kBinBytes:
    case kShortBinBytes:
    case kBinBytes8:
    case kByteArray8:
    case kBinString:
    case kShortBinString: {
      uint64_t n;
      if (op == kShortBinUnicode || op == kShortBinBytes ||
          op == kShortBinString) {
        RETURN_IF_ERROR(ReadBytes(1, &raw));
        n = static_cast<uint8_t>(raw[0]);
      } else if (op == kBinUnicode || op == kBinBytes || op == kBinString) {
        RETURN_IF_ERROR(ReadBytes(4, &raw));
        n = LE32(raw.data());
        if (op == kBinString && static_cast<int32_t>(n) < 0) {
          return Error(at, "BINSTRING with negative length");
        }
      } else {
        RETURN_IF_ERROR(ReadBytes(8, &raw));
        n = LE64(raw.data());
      }
      if (n > options_.max_string_bytes) {
        return Error(at, absl::StrCat("string of ", n, " bytes, limit is ",
                                      options_.max_string_bytes));
      }
      RETURN_IF_ERROR(ReadBytes(n, &raw));
      PyValue* v;
      if (op == kBinString || op == kShortBinString) {
        auto s = DecodePy2String(raw);
        if (!s.ok()) return Error(at, s.status().message());
        v = *s;
      } else {
        PyKind kind =
            (op == kBinBytes || op == kShortBinBytes || op == kBinBytes8)
                ? PyKind::kBytes
            : op == kByteArray8 ? PyKind::kByteArray
                                : PyKind::kStr;
        // Text becomes tensor names, protobuf strings and JSON: UTF-8 only,
        // as CPython decodes it (which also lets lone surrogates through;
        // those cannot be sent anywhere, so they are refused too).
        if (kind == PyKind::kStr && !IsValidUtf8(raw)) {
          return Error(at, "unicode string is not valid UTF-8");
        }
        v = NewValue(kind);
        v->s = std::string(raw);
      }
      return Push(v, at);
    }
    case kString: {
      RETURN_IF_ERROR(ReadLine(&raw));
      while (!raw.empty() && (raw.back() == '\r' || raw.back() == ' ')) {
        raw.remove_suffix(1);
      }
      if (raw.size() < 2 || raw.front() != raw.back() ||
          (raw.front() != '\'' && raw.front() != '"')) {
        return Error(at, "STRING argument is not quoted");
      }
      std::string decoded;
      std::string unescape_error;
      if (!absl::CUnescape(raw.substr(1, raw.size() - 2), &decoded,
                           &unescape_error)) {
        return Error(at, absl::StrCat("bad STRING escape: ", unescape_error));
      }
      auto s = DecodePy2String(decoded);
      if (!s.ok()) return Error(at, s.status().message());
      return Push(*s, at);
    }
    case kUnicode: {
      RETURN_IF_ERROR(ReadLine(&raw));
      // raw-unicode-escape: \uXXXX, \UXXXXXXXX; other bytes are latin-1.
      PyValue* v = NewValue(PyKind::kStr);
      for (size_t k = 0; k < raw.size(); ++k) {
        unsigned char c = static_cast<unsigned char>(raw[k]);
        if (c == '\\' && k + 1 < raw.size() &&
            (raw[k + 1] == 'u' || raw[k + 1] == 'U')) {
          size_t digits = raw[k + 1] == 'u' ? 4 : 8;
          uint32_t cp = 0;
          if (k + 2 + digits > raw.size() ||
              !absl::SimpleHexAtoi(raw.substr(k + 2, digits), &cp) ||
              cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
            return Error(at, "bad UNICODE escape");
          }
          AppendUtf8(cp, &v->s);
          k += 1 + digits;
        } else {
          AppendUtf8(c, &v->s);
        }
      }
      return Push(v, at);
    }
    case kEmptyTuple:
      return Push(NewValue(PyKind::kTuple), at);
    case kEmptyList:
      return Push(NewValue(PyKind::kList), at);
    case kEmptyDict:
      return Push(NewValue(PyKind::kDict), at);
    case kEmptySet:
      return Push(NewValue(PyKind::kSet), at);
    case kTuple:
    case kList:
    case kFrozenSet: {
      ASSIGN_OR_RETURN(std::vector<PyValue*> items, PopMark(at));
      PyValue* v = NewValue(op == kTuple  ? PyKind::kTuple
                            : op == kList ? PyKind::kList
                                          : PyKind::kFrozenSet);
      v->items = std::move(items);
      return Push(v, at);
    }
    case kTuple1:
    case kTuple2:
    case kTuple3: {
      size_t n = op - kTuple1 + 1;
      size_t floor = marks_.empty() ? 0 : marks_.back();
      if (stack_.size() < floor + n) return Error(at, "pickle stack underflow");
      PyValue* v = NewValue(PyKind::kTuple);
      v->items.assign(stack_.end() - n, stack_.end());
      stack_.resize(stack_.size() - n);
      return Push(v, at);
    }
    case kDict: {
      ASSIGN_OR_RETURN(std::vector<PyValue*> items, PopMark(at));
      if (items.size() % 2)
        return Error(at, "DICT with an odd number of items");
      PyValue* d = NewValue(PyKind::kDict);
      for (size_t k = 0; k < items.size(); k += 2) {
        RETURN_IF_ERROR(SetItem(d, items[k], items[k + 1], at));
      }
      return Push(d, at);
    }
    case kAppend: {
      ASSIGN_OR_RETURN(PyValue * item, Pop(at));
      ASSIGN_OR_RETURN(PyValue * list, Top(at));
      if (list->kind != PyKind::kList) {
        return Error(at, absl::StrCat("APPEND to a ", PyTypeName(list)));
      }
      list->items.push_back(item);
      return absl::OkStatus();
    }
    case kAppends: {
      ASSIGN_OR_RETURN(std::vector<PyValue*> items, PopMark(at));
      ASSIGN_OR_RETURN(PyValue * list, Top(at));
      if (list->kind != PyKind::kList) {
        return Error(at, absl::StrCat("APPENDS to a ", PyTypeName(list)));
      }
      list->items.insert(list->items.end(), items.begin(), items.end());
      return absl::OkStatus();
    }
    case kAddItems: {
      ASSIGN_OR_RETURN(std::vector<PyValue*> items, PopMark(at));
      ASSIGN_OR_RETURN(PyValue * set, Top(at));
      if (set->kind != PyKind::kSet) {
        return Error(at, absl::StrCat("ADDITEMS to a ", PyTypeName(set)));
      }
      set->items.insert(set->items.end(), items.begin(), items.end());
      return absl::OkStatus();
    }
    case kSetItem: {
      ASSIGN_OR_RETURN(PyValue * value, Pop(at));
      ASSIGN_OR_RETURN(PyValue * key, Pop(at));
      ASSIGN_OR_RETURN(PyValue * dict, Top(at));
      return SetItem(dict, key, value, at);
    }
    case kSetItems: {
      ASSIGN_OR_RETURN(std::vector<PyValue*> items, PopMark(at));
      if (items.size() % 2) {
        return Error(at, "SETITEMS with an odd number of items");
      }
      ASSIGN_OR_RETURN(PyValue * dict, Top(at));
      for (size_t k = 0; k < items.size(); k += 2) {
        RETURN_IF_ERROR(SetItem(dict, items[k], items[k + 1], at));
      }
      return absl::OkStatus();
    }
    case kPut:
    case kBinPut:
    case kLongBinPut:
    case kMemoize: {
      uint64_t id;
      if (op == kPut) {
        RETURN_IF_ERROR(ReadLine(&raw));
        if (!absl::SimpleAtoi(raw, &id)) return Error(at, "bad PUT index");
      } else if (op == kBinPut) {
        RETURN_IF_ERROR(ReadBytes(1, &raw));
        id = static_cast<uint8_t>(raw[0]);
      } else if (op == kLongBinPut) {
        RETURN_IF_ERROR(ReadBytes(4, &raw));
        id = LE32(raw.data());
      } else {
        id = memo_count_;
      }
      ASSIGN_OR_RETURN(PyValue * top, Top(at));
      return MemoPut(id, top, at);
    }
    case kGet:
    case kBinGet:
    case kLongBinGet: {
      uint64_t id;
      if (op == kGet) {
        RETURN_IF_ERROR(ReadLine(&raw));
        if (!absl::SimpleAtoi(raw, &id)) return Error(at, "bad GET index");
      } else if (op == kBinGet) {
        RETURN_IF_ERROR(ReadBytes(1, &raw));
        id = static_cast<uint8_t>(raw[0]);
      } else {
        RETURN_IF_ERROR(ReadBytes(4, &raw));
        id = LE32(raw.data());
      }
      ASSIGN_OR_RETURN(PyValue * v, MemoGet(id, at));
      return Push(v, at);
    }
    case kGlobal: {
      absl::string_view module, name;
      RETURN_IF_ERROR(ReadLine(&module));
      RETURN_IF_ERROR(ReadLine(&name));
      ASSIGN_OR_RETURN(PyValue * g,
                       MakeGlobal(std::string(module), std::string(name), at));
      return Push(g, at);
    }
    case kStackGlobal: {
      ASSIGN_OR_RETURN(PyValue * name, Pop(at));
      ASSIGN_OR_RETURN(PyValue * module, Pop(at));
      if (name->kind != PyKind::kStr || module->kind != PyKind::kStr) {
        return Error(at, "STACK_GLOBAL needs two strings");
      }
      ASSIGN_OR_RETURN(PyValue * g, MakeGlobal(module->s, name->s, at));
      return Push(g, at);
    }
    case kInst: {
      absl::string_view module, name;
      RETURN_IF_ERROR(ReadLine(&module));
      RETURN_IF_ERROR(ReadLine(&name));
      ASSIGN_OR_RETURN(PyValue * g,
                       MakeGlobal(std::string(module), std::string(name), at));
      ASSIGN_OR_RETURN(std::vector<PyValue*> items, PopMark(at));
      PyValue* args = NewValue(PyKind::kTuple);
      args->items = std::move(items);
      ASSIGN_OR_RETURN(PyValue * r, Call(g, args, at));
      return Push(r, at);
    }
    case kObj: {
      ASSIGN_OR_RETURN(std::vector<PyValue*> items, PopMark(at));
      if (items.empty()) return Error(at, "OBJ without a class");
      PyValue* args = NewValue(PyKind::kTuple);
      args->items.assign(items.begin() + 1, items.end());
      ASSIGN_OR_RETURN(PyValue * r, Call(items[0], args, at));
      return Push(r, at);
    }
    case kReduce:
    case kNewObj: {
      ASSIGN_OR_RETURN(PyValue * args, Pop(at));
      ASSIGN_OR_RETURN(PyValue * callable, Pop(at));
      ASSIGN_OR_RETURN(PyValue * r, Call(callable, args, at));
      return Push(r, at);
    }
    case kNewObjEx: {
      ASSIGN_OR_RETURN(PyValue * kwargs, Pop(at));
      ASSIGN_OR_RETURN(PyValue * args, Pop(at));
      ASSIGN_OR_RETURN(PyValue * cls, Pop(at));
      if (kwargs->kind != PyKind::kDict || !kwargs->pairs.empty()) {
        return Error(at, "NEWOBJ_EX with keyword arguments is not supported");
      }
      ASSIGN_OR_RETURN(PyValue * r, Call(cls, args, at));
      return Push(r, at);
    }
    case kBuild: {
      ASSIGN_OR_RETURN(PyValue * state, Pop(at));
      ASSIGN_OR_RETURN(PyValue * inst, Top(at));
      return Build(inst, state, at);
    }
    case kPersId:
    case kBinPersId: {
      PyValue* pid;
      if (op == kPersId) {
        RETURN_IF_ERROR(ReadLine(&raw));
        pid = NewValue(PyKind::kStr);
        pid->s = std::string(raw);
      } else {
        ASSIGN_OR_RETURN(pid, Pop(at));
      }
      if (!persistent_loader_) {
        return Error(at, "persistent id without a persistent loader");
      }
      auto r = persistent_loader_(*this, pid);
      if (!r.ok()) return Error(at, r.status().message());
      return Push(*r, at);
    }
    case kExt1:
    case kExt2:
    case kExt4:
      return Error(at, "unsupported: pickle extension registry (EXT opcodes)");
    case kNextBuffer:
      return Error(at, "unsupported: out-of-band buffers (NEXT_BUFFER)");
    case kReadOnlyBuffer:
      return Top(at).status();
    default:
      return Error(at, absl::StrFormat("unknown pickle opcode 0x%02x", op));
  }
}

}  // namespace weightd
