#include "loader/format/pickle.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "loader/common/json.h"  // AppendUtf8
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

}  // namespace

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

absl::StatusOr<PyValue*> Unpickler::MakeGlobal(absl::string_view module,
                                               absl::string_view name,
                                               size_t at) {
  auto global = LoadGlobal(*this, module, name, options_.torchscript);
  if (!global.ok()) return Error(at, global.status().message());
  return global;
}

absl::Status Unpickler::SetItem(PyValue* dict, PyValue* key, PyValue* value) {
  if (dict->kind != PyKind::kDict) {
    return absl::InvalidArgumentError(absl::StrCat(
        "SETITEM on a ", PyTypeName(dict), " (only dicts allowed)"));
  }
  ASSIGN_OR_RETURN(std::string id, KeyIdentity(key));
  auto& index = dict_index_[dict];
  auto it = index.find(id);
  if (it != index.end()) {
    dict->pairs[it->second].second = value;
    return absl::OkStatus();
  }
  index.emplace(std::move(id), dict->pairs.size());
  dict->pairs.emplace_back(key, value);
  return absl::OkStatus();
}

absl::Status Unpickler::SetItem(PyValue* dict, PyValue* key, PyValue* value,
                                size_t at) {
  absl::Status status = SetItem(dict, key, value);
  if (!status.ok()) return Error(at, status.message());
  return status;
}

absl::StatusOr<PyValue*> Unpickler::Call(PyValue* callable, PyValue* args,
                                         size_t at) {
  auto result = CallGlobal(*this, callable, args);
  if (!result.ok()) return Error(at, result.status().message());
  return result;
}

absl::Status Unpickler::Build(PyValue* inst, PyValue* state, size_t at) {
  switch (inst->kind) {
    case PyKind::kDict:
      inst->state = state;  // OrderedDict attributes (state_dict _metadata)
      return absl::OkStatus();
    case PyKind::kTensor:
      return absl::OkStatus();  // Parameter/tensor Python attributes: ignored
    case PyKind::kObject: {
      // Legacy tensors and TorchScript objects, as their class's row says.
      absl::Status status = BuildObject(*this, inst, state);
      if (!status.ok()) return Error(at, status.message());
      return status;
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
      ASSIGN_OR_RETURN(PyValue * g, MakeGlobal(module, name, at));
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
      ASSIGN_OR_RETURN(PyValue * g, MakeGlobal(module, name, at));
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
