#!/usr/bin/python3
"""Writes random checkpoints with real torch (zip, legacy, big-endian zip,
TorchScript, safetensors, nested training checkpoints, views of every kind,
every dtype torch can save) and compares name, dtype, shape, stride,
storage_offset and sha256 of every tensor with `inspect --json --hash`.

    /usr/bin/python3 tests/interop/interop_test.py --inspect BIN [--seed N]
"""

import argparse
import collections
import importlib.util
import json
import os
import random
import subprocess
import sys
import time
import warnings

warnings.filterwarnings("ignore")
import torch  # noqa: E402


def load_generator(path):
    spec = importlib.util.spec_from_file_location("generate", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16,
          torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8,
          torch.bool, torch.complex64, torch.complex128]


# Dtypes torch >= 2.1 saves through _rebuild_tensor_v3 (absent from 1.13).
NEW_DTYPES = [getattr(torch, n) for n in
              ["float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz",
               "uint16", "uint32", "uint64"] if hasattr(torch, n)]


def rand_tensor(rnd, dtype):
    ndim = rnd.randrange(0, 4)
    shape = [rnd.randrange(0, 5) if rnd.random() < 0.1 else rnd.randrange(1, 6)
             for _ in range(ndim)]
    if dtype == torch.bool:
        t = torch.rand(shape) > 0.5
    elif dtype.is_complex:
        t = torch.randn(shape, dtype=dtype)
    elif dtype.is_floating_point:
        t = torch.randn(shape).to(dtype)
    else:
        t = torch.randint(-100 if dtype != torch.uint8 else 0, 100, shape).to(dtype)
    # Random view of it.
    kind = rnd.randrange(6)
    if kind == 1 and t.dim() >= 2:
        t = t.transpose(0, t.dim() - 1)
    elif kind == 2 and t.dim() >= 1 and t.shape[0] > 1:
        t = t[1:]
    elif kind == 3 and t.dim() >= 1 and t.shape[-1] > 2:
        t = t[..., ::2]
    elif kind == 4 and t.dim() >= 1:
        t = t.unsqueeze(0).expand(3, *t.shape)
    return t


def rand_state(rnd, n):
    state = collections.OrderedDict()
    shared = torch.randn(rnd.randrange(1, 30))
    for i in range(n):
        r = rnd.random()
        if r < 0.1 and shared.numel() > 0:
            state[f"shared.{i}"] = shared[rnd.randrange(shared.numel()):]
        elif r < 0.2:
            state[f"p{i}"] = torch.nn.Parameter(torch.randn(rnd.randrange(1, 4), 2))
        else:
            state[f"layer{i}.t"] = rand_tensor(rnd, rnd.choice(DTYPES))
    return state


def run_inspect(inspect, path):
    r = subprocess.run([inspect, "--json", "--hash", path], capture_output=True,
                       text=True)
    if r.returncode != 0:
        raise AssertionError(f"inspect failed on {path}: {r.stderr.strip()}")
    return json.loads(r.stdout)


def compare(gen, inspect, path, expected):
    got = run_inspect(inspect, path)
    problems = []
    if got["format"] != expected["format"]:
        problems.append(f"format {got['format']} != {expected['format']}")
    g = [t["name"] for t in got["tensors"]]
    w = [t["name"] for t in expected["tensors"]]
    if g != w:
        problems.append(f"names differ: got {g[:8]}..., torch {w[:8]}...")
    gm = {t["name"]: t for t in got["tensors"]}
    for t in expected["tensors"]:
        if gm.get(t["name"]) != t:
            problems.append(f"tensor {t['name']}: got {gm.get(t['name'])}, torch {t}")
    if "extra_files" in expected and got.get("extra_files") != expected["extra_files"]:
        problems.append("extra_files differ")
    return problems


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--inspect", required=True)
    ap.add_argument("--generator", default="tests/fixtures/generate.py")
    ap.add_argument("--workdir", default="/tmp/weightd_interop")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else int(time.time() * 1000) % 2**31
    print(f"interop seed {seed} (rerun with --seed {seed}), torch {torch.__version__}")
    rnd = random.Random(seed)
    torch.manual_seed(seed)
    os.makedirs(args.workdir, exist_ok=True)
    gen = load_generator(args.generator)
    gen.OUT = args.workdir
    failures = []
    checked = 0

    def check(name, expected):
        nonlocal checked
        path = os.path.join(args.workdir, name)
        probs = compare(gen, args.inspect, path, expected)
        checked += len(expected["tensors"])
        for p in probs:
            failures.append(f"{name}: {p}")

    for round_ in range(args.rounds):
        state = rand_state(rnd, rnd.randrange(1, 40))
        nested = {"model": state, "epoch": rnd.randrange(100),
                  "extra": [rand_tensor(rnd, torch.float32), {"k": 1.5}],
                  7: rand_tensor(rnd, torch.int64)}
        for obj, base in [(state, "state"), (nested, "nested")]:
            for fmt, kw in [("torch-zip", {}),
                            ("torch-legacy", {"_use_new_zipfile_serialization": False})]:
                name = f"{base}{round_}_{fmt}.pt"
                path = os.path.join(args.workdir, name)
                # Any pickle protocol torch can load (0 cannot hold tuple ids).
                torch.save(obj, path, pickle_protocol=rnd.choice([1, 2, 3, 4, 5]), **kw)
                loaded = torch.load(path)
                check(name, gen.describe(gen.flatten(loaded, "", []), fmt))
        # Big-endian rewrite of the zip.
        name = f"state{round_}_torch-zip.pt"
        with open(os.path.join(args.workdir, name + ".expected.json"), "w") as f:
            json.dump(gen.describe(gen.flatten(torch.load(os.path.join(args.workdir, name)), "", []),
                                   "torch-zip"), f)
        gen.big_endian(name, f"big{round_}.pt")
        with open(os.path.join(args.workdir, f"big{round_}.pt.expected.json")) as f:
            check(f"big{round_}.pt", json.load(f))
        # safetensors of contiguous tensors.
        st = collections.OrderedDict()
        for i in range(rnd.randrange(1, 10)):
            dt = rnd.choice([torch.float32, torch.float16, torch.bfloat16,
                             torch.int64, torch.int32, torch.uint8, torch.bool])
            st[f"t{i}"] = rand_tensor(rnd, dt).contiguous()
        gen.safetensors(f"st{round_}.safetensors", st)
        with open(os.path.join(args.workdir, f"st{round_}.safetensors.expected.json")) as f:
            check(f"st{round_}.safetensors", json.load(f))

    # Newer dtypes (torch 2.x only), zip format.
    if NEW_DTYPES:
        modern = collections.OrderedDict(
            (f"m{i}", rand_tensor(rnd, rnd.choice(NEW_DTYPES))) for i in range(20))
        name = "modern_dtypes.pt"
        torch.save(modern, os.path.join(args.workdir, name))
        check(name, gen.describe(gen.flatten(torch.load(os.path.join(args.workdir, name)), "", []),
                                 "torch-zip"))

    # TorchScript: a random MLP with buffers and extra files.
    layers = []
    width = rnd.randrange(2, 6)
    for _ in range(rnd.randrange(1, 4)):
        nxt = rnd.randrange(2, 6)
        layers += [torch.nn.Linear(width, nxt), torch.nn.BatchNorm1d(nxt), torch.nn.ReLU()]
        width = nxt
    ts = torch.jit.script(torch.nn.Sequential(*layers))
    extra = {"config.json": json.dumps({"seed": seed})}
    path = os.path.join(args.workdir, "script.pt")
    torch.jit.save(ts, path, _extra_files=extra)
    loaded = torch.jit.load(path)
    check("script.pt", gen.describe(list(loaded.state_dict().items()),
                                    "torchscript", extra))

    if failures:
        print(f"FAILED: {len(failures)} mismatches (seed {seed})")
        for f in failures[:50]:
            print("  " + f)
        sys.exit(1)
    print(f"PASSED: {checked} tensors match torch (seed {seed})")


if __name__ == "__main__":
    main()
