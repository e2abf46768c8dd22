"""dtype names as the daemon sends them (PyTorch's, without the `torch.` prefix)."""
import collections

from .errors import UnsupportedDtypeError

# name -> (element size in bytes, numpy dtype or None when numpy has no such type, raw numpy
# dtype used instead when numpy lacks it)
DTypeInfo = collections.namedtuple("DTypeInfo", "name itemsize numpy raw_numpy")

_TABLE = [
    DTypeInfo("float64", 8, "<f8", None),
    DTypeInfo("float32", 4, "<f4", None),
    DTypeInfo("float16", 2, "<f2", None),
    DTypeInfo("bfloat16", 2, None, "<u2"),
    DTypeInfo("complex128", 16, "<c16", None),
    DTypeInfo("complex64", 8, "<c8", None),
    DTypeInfo("complex32", 4, None, [("real", "<f2"), ("imag", "<f2")]),
    DTypeInfo("int64", 8, "<i8", None),
    DTypeInfo("int32", 4, "<i4", None),
    DTypeInfo("int16", 2, "<i2", None),
    DTypeInfo("int8", 1, "|i1", None),
    DTypeInfo("uint64", 8, "<u8", None),
    DTypeInfo("uint32", 4, "<u4", None),
    DTypeInfo("uint16", 2, "<u2", None),
    DTypeInfo("uint8", 1, "|u1", None),
    DTypeInfo("bool", 1, "|b1", None),
    DTypeInfo("float8_e4m3fn", 1, None, "|u1"),
    DTypeInfo("float8_e5m2", 1, None, "|u1"),
    DTypeInfo("float8_e4m3fnuz", 1, None, "|u1"),
    DTypeInfo("float8_e5m2fnuz", 1, None, "|u1"),
    DTypeInfo("float8_e8m0fnu", 1, None, "|u1"),
    DTypeInfo("float4_e2m1fn_x2", 1, None, "|u1"),
]
DTYPES = collections.OrderedDict((d.name, d) for d in _TABLE)

# Spellings PyTorch also accepts.
ALIASES = {
    "float": "float32", "double": "float64", "half": "float16", "long": "int64", "int": "int32",
    "short": "int16", "cfloat": "complex64", "cdouble": "complex128", "chalf": "complex32",
}

CAST_DTYPES = ("bfloat16", "float16", "float32")


def info(name):
    """The DTypeInfo for a daemon dtype name; UnsupportedDtypeError when unknown."""
    name = ALIASES.get(name, name)
    try:
        return DTYPES[name]
    except KeyError:
        raise UnsupportedDtypeError("unknown dtype %r" % name) from None


def torch_dtype(torch, name):
    """The torch.dtype for a daemon dtype name; a clear error where this torch lacks it."""
    d = info(name)
    value = getattr(torch, d.name, None)
    if value is None:
        raise UnsupportedDtypeError(
            "dtype %s needs a newer PyTorch (this is %s)" % (d.name, torch.__version__))
    return value


def numpy_dtype(np, name):
    """(numpy dtype, raw) for a daemon dtype name. raw is True where numpy lacks the type and
    the array holds the elements' raw bits (bfloat16 as uint16, float8 as uint8, complex32 as
    pairs of float16)."""
    d = info(name)
    if d.numpy is not None:
        return np.dtype(d.numpy), False
    return np.dtype(d.raw_numpy), True


# Element types torch.from_numpy takes as they are; the others are read as signed integers of
# their size and viewed as the torch dtype.
_FROM_NUMPY = {"float64": "<f8", "float32": "<f4", "float16": "<f2", "complex128": "<c16",
               "complex64": "<c8", "int64": "<i8", "int32": "<i4", "int16": "<i2",
               "int8": "|i1", "uint8": "|u1", "bool": "|b1"}


def from_numpy_dtype(name):
    """The numpy dtype string torch.from_numpy turns into this dtype, or None."""
    return _FROM_NUMPY.get(ALIASES.get(name, name))


def name_of(dtype):
    """The daemon name of a dtype given as a string ("bfloat16", "torch.bfloat16") or a
    torch.dtype."""
    text = str(dtype)
    if text.startswith("torch."):
        text = text[len("torch."):]
    return ALIASES.get(text, text)
