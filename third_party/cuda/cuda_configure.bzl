"""Detects the CUDA toolkit at fetch time.

With a toolkit (WEIGHTD_CUDA_HOME, else /usr/local/cuda) the generated @local_cuda//:cudart
links the static CUDA runtime and defines WEIGHTD_HAVE_CUDA=1, so one binary runs on machines
with or without a driver (without one it sees zero GPUs). Without a toolkit, or with
WEIGHTD_CUDA_HOME=none, :cudart is empty and GPU support is compiled out.
"""

_HEADER = "include/cuda_runtime_api.h"
_STATIC_RUNTIME = "lib64/libcudart_static.a"

def _cuda_configure_impl(ctx):
    home = ctx.os.environ.get("WEIGHTD_CUDA_HOME", "/usr/local/cuda")
    found = (home != "none" and
             ctx.path(home + "/" + _HEADER).exists and
             ctx.path(home + "/" + _STATIC_RUNTIME).exists)
    if found:
        ctx.symlink(home + "/include", "include")
        ctx.symlink(home + "/" + _STATIC_RUNTIME, "lib/libcudart_static.a")
        build = """
package(default_visibility = ["//visibility:public"])

cc_library(
    name = "cudart",
    srcs = ["lib/libcudart_static.a"],
    hdrs = glob(["include/**/*.h", "include/**/*.hpp"]),
    includes = ["include"],
    defines = ["WEIGHTD_HAVE_CUDA=1"],
    linkopts = ["-ldl", "-lrt", "-lpthread"],
)

"""
    else:
        build = """
package(default_visibility = ["//visibility:public"])

# No CUDA toolkit was found: GPU support is compiled out.
cc_library(name = "cudart")
"""
    ctx.file("BUILD", build)
    ctx.file("cuda_info.bzl", "CUDA_FOUND = %s\nCUDA_HOME = %r\n" % (found, home if found else ""))

cuda_configure = repository_rule(
    implementation = _cuda_configure_impl,
    environ = ["WEIGHTD_CUDA_HOME"],
    local = True,
)
