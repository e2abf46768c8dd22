// Python's text for unpickled values, as CPython writes it: type names and
// str() for tensor names, dict keys and error messages, repr() of floats and
// quoted strings, decimal digits of big ints.
#ifndef WEIGHTD_LOADER_FORMAT_PICKLE_REPR_H_
#define WEIGHTD_LOADER_FORMAT_PICKLE_REPR_H_

#include <string>

#include "absl/strings/string_view.h"
#include "loader/format/pickle_value.h"

namespace weightd {

// Python's type name of a value ("int", "dict", "torch.Tensor", ...).
std::string PyTypeName(const PyValue* v);
// Python's str() of a dict key / scalar: ints decimal, floats repr, True,
// None, tuples "(1, 'a')" (past 100 levels of nesting "(...)"), bytes
// "b'x'".
std::string PyStr(const PyValue* v);
// Python's repr() of a float: the shortest text that reads back exactly,
// scientific when the exponent is below -4 or at least 16 ("0.1", "1e+16",
// "2.0", "nan", "-inf").
std::string PyFloatRepr(double v);
// Python's repr() of a str (bytes = false) or bytes (bytes = true, "b'..'").
std::string PyQuote(absl::string_view s, bool bytes);
// Python's str() of the int whose little-endian two's complement bytes are
// `le` (a LONG1/LONG4 payload; "0" when empty).
std::string BigIntDecimal(absl::string_view le);

}  // namespace weightd

#endif  // WEIGHTD_LOADER_FORMAT_PICKLE_REPR_H_
