"""Offline stand-in for rules_python: re-exports Bazel's native Python rules."""

py_binary = native.py_binary
py_library = native.py_library
py_test = native.py_test
py_runtime = native.py_runtime
py_runtime_pair = native.py_runtime_pair
