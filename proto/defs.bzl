"""Generates C++ (and gRPC) code from a .proto with Debian's protoc and grpc_cpp_plugin."""

def cc_grpc_library(name, src, deps = [], grpc = True):
    base = src[:-len(".proto")]
    pkg = native.package_name()
    outs = [base + ".pb.h", base + ".pb.cc"]
    plugin = ""
    if grpc:
        outs += [base + ".grpc.pb.h", base + ".grpc.pb.cc"]
        plugin = " --plugin=protoc-gen-grpc=/usr/bin/grpc_cpp_plugin --grpc_out=$(GENDIR)"
    native.genrule(
        name = name + "_gen",
        srcs = [src],
        outs = outs,
        cmd = "/usr/bin/protoc -I. --cpp_out=$(GENDIR)" + plugin + " " + pkg + "/" + src,
    )
    native.cc_library(
        name = name,
        srcs = [o for o in outs if o.endswith(".cc")],
        hdrs = [o for o in outs if o.endswith(".h")],
        deps = deps + ["@system//:grpc++"],
        visibility = ["//visibility:public"],
    )

def py_grpc_library(name, src):
    base = src[:-len(".proto")]
    pkg = native.package_name()
    native.genrule(
        name = name,
        srcs = [src],
        outs = [base + "_pb2.py", base + "_pb2_grpc.py"],
        cmd = "/usr/bin/protoc -I. --python_out=$(GENDIR) --plugin=protoc-gen-grpc_python=/usr/bin/grpc_python_plugin --grpc_python_out=$(GENDIR) " + pkg + "/" + src,
        visibility = ["//visibility:public"],
    )
