#include "loader/format/pickle_repr.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace weightd {

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

namespace {

// Deeper than any dict key (the unpickler refuses keys nested past 64
// levels), shallow enough for any thread's stack: a tuple nested deeper is
// written "(...)".
constexpr int kMaxStrDepth = 100;

std::string StrAtDepth(const PyValue* v, int depth) {
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
      if (depth >= kMaxStrDepth) return "(...)";
      std::vector<std::string> parts;
      for (const PyValue* item : v->items) {
        parts.push_back(item->kind == PyKind::kStr
                            ? PyQuote(item->s, false)
                            : StrAtDepth(item, depth + 1));
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

}  // namespace

std::string PyStr(const PyValue* v) { return StrAtDepth(v, 0); }

}  // namespace weightd
