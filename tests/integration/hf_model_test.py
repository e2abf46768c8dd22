"""Hugging Face model directories through the real daemon, weightctl and the Python client.

The fixtures (tests/fixtures/hf, written by generate.py's hf_models with real torch) are copied
into a fresh model root, symlinks kept (the hub snapshot's point into its blobs/). Checks:
`weightctl inspect --json --hash DIR` equals `weightctl load DIR --json --hash` on the host and
on the fake GPU and equals what torch reported; the Python client's tensors equal torch.load of
each .bin shard and torch.frombuffer of each safetensors shard (read here from the format's
spec); two client processes loading one directory read it once; bad directories are refused
with one clear line; a replaced shard is a new entry.

Usage: hf_model_test.py WEIGHTD WEIGHTCTL PYTHON_PACKAGE_DIR FIXTURES_HF_DIR
"""
import collections
import json
import os
import shutil
import struct
import sys
import tempfile
import unittest

import torch

import daemon_case
from daemon_case import harness

FIXTURES = None
SNAPSHOT = "hub/models--tiny--model/snapshots/0123456789abcdef"
# (directory, format hint, expectation file)
CASES = [("sharded_torch", "", "sharded_torch"),
         ("sharded_safetensors", "", "sharded_safetensors"),
         ("single_both", "", "single_both"),
         ("single_both", "hf-torch", "single_both.hf-torch"),
         (SNAPSHOT, "", "hub")]
_ST_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8, "BOOL": torch.bool}


def read_safetensors(path):
    """{name: tensor} of a safetensors file, from the spec (no safetensors package here)."""
    header, body = harness.read_safetensors(path)
    out = {}
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        raw = bytearray(body[begin:end])
        dtype = _ST_DTYPES[entry["dtype"]]
        flat = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        out[name] = flat.reshape(entry["shape"])
    return out


def torch_model(directory):
    """Every tensor of a model directory as torch reads each shard."""
    names = os.listdir(directory)
    index = next((n for n in ("model.safetensors.index.json", "pytorch_model.bin.index.json")
                  if n in names), None)
    if index:
        with open(os.path.join(directory, index)) as f:
            shards = list(dict.fromkeys(json.load(f)["weight_map"].values()))
    else:
        shards = ["model.safetensors" if "model.safetensors" in names else "pytorch_model.bin"]
    out = collections.OrderedDict()
    for shard in shards:
        path = os.path.join(directory, shard)
        out.update(read_safetensors(path) if shard.endswith(".safetensors")
                   else torch.load(path))
    return out


class HfModelTest(daemon_case.DaemonTestCase):
    @classmethod
    def setUpClass(cls):
        root = tempfile.mkdtemp(prefix="weightd-hf-models-")
        for name in ("sharded_torch", "sharded_safetensors", "single_both", "hub"):
            shutil.copytree(os.path.join(FIXTURES, name), os.path.join(root, name),
                            symlinks=True)
        cls.start_daemon(root)

    def copy(self, name, source="sharded_safetensors"):
        shutil.copytree(self.path(source), self.path(name), symlinks=True)
        return self.path(name)

    def test_inspect_equals_load_equals_torch(self):
        for directory, hint, expected in CASES:
            hint_args = [f"--format={hint}"] if hint else []
            with self.subTest(directory=directory, hint=hint):
                inspect = self.weightctl("inspect", "--json", "--hash", *hint_args,
                                         self.path(directory))
                self.assertEqual(inspect.returncode, 0, inspect.stderr)
                with open(os.path.join(FIXTURES, expected + ".expected.json")) as f:
                    self.assertEqual(json.loads(inspect.stdout), json.load(f))
                for device in ("cpu", "cuda:0"):
                    load = self.weightctl("load", self.path(directory), "--device", device,
                                          "--json", "--hash", "--quiet",
                                          *(["--format", hint] if hint else []))
                    self.assertEqual(load.returncode, 0, load.stderr)
                    self.assertEqual(load.stdout, inspect.stdout, device)

    def test_python_client_equals_torch(self):
        for directory, hint, _ in CASES:
            want = torch_model(self.path(directory)) if not hint else \
                torch.load(self.path(os.path.join(directory, "pytorch_model.bin")))
            for device in ("cpu", "cuda:0"):
                with self.subTest(directory=directory, hint=hint, device=device):
                    got = self.client.load(self.path(directory), device=device,
                                           format_hint=hint)
                    self.assertEqual(sorted(got.keys()), sorted(want.keys()))
                    for name, tensor in want.items():
                        self.assertEqual(got[name].dtype, tensor.dtype, name)
                        self.assertEqual(tuple(got[name].shape), tuple(tensor.shape), name)
                        self.assertTrue(torch.equal(got[name].cpu(), tensor), name)
        model = self.client.load(self.path("sharded_safetensors"), device="cpu")
        self.assertEqual(model.format, "hf-safetensors")
        self.assertEqual(list(model.description.shards),
                         ["model-00002-of-00002.safetensors",
                          "model-00001-of-00002.safetensors"])
        with open(self.path("sharded_safetensors/config.json")) as f:
            self.assertEqual(json.loads(model.description.config_json), json.load(f))
        self.assertEqual(json.loads(model.description.generation_config_json),
                         {"bos_token_id": 1, "eos_token_id": 2})

    def test_two_clients_read_a_directory_once(self):
        runs, stats = self.load_in_two_processes(self.path("sharded_torch"))
        for done in runs:
            self.assertEqual(done.returncode, 0, done.stderr)
            self.assertEqual(done.stdout.strip(), "7")
        self.assertEqual(stats.loads, 1)
        self.assertEqual(stats.cache_hits, 1)

    def test_bad_directories_are_one_clear_line(self):
        shard = "model-00001-of-00002.safetensors"
        index_name = "model.safetensors.index.json"

        def with_index(name, edit):
            directory = self.copy(name)
            with open(os.path.join(directory, index_name)) as f:
                index = json.load(f)
            text = edit(index)
            with open(os.path.join(directory, index_name), "w") as f:
                f.write(text if isinstance(text, str) else json.dumps(index))
            return directory

        def moved(index):
            index["weight_map"]["model.norm.weight"] = "model-00002-of-00002.safetensors"

        def unlisted(index):
            del index["weight_map"]["model.norm.weight"]

        def not_string(index):
            index["weight_map"]["model.norm.weight"] = 3

        def total(index):
            index["metadata"]["total_size"] += 1

        def missing(index):
            index["weight_map"]["model.norm.weight"] = "model-00009-of-00009.safetensors"

        escape = self.copy("bad_escape")
        outside = tempfile.mkdtemp(prefix="weightd-outside-")
        shutil.copy(os.path.join(escape, shard), os.path.join(outside, shard))
        os.remove(os.path.join(escape, shard))
        os.symlink(os.path.join(outside, shard), os.path.join(escape, shard))
        cases = [
            (with_index("bad_moved", moved), "is in shard " + shard),
            (with_index("bad_unlisted", unlisted), "is not in the index's weight_map"),
            (with_index("bad_not_string", not_string), "is not a string"),
            (with_index("bad_total", total), "total_size"),
            (with_index("bad_missing", missing), "model-00009-of-00009.safetensors"),
            (with_index("bad_json", lambda index: '{"weight_map": {'), "invalid JSON"),
            (escape, "outside the model roots"),
        ]
        try:
            for directory, why in cases:
                with self.subTest(directory=directory):
                    with self.assertRaises(self.weightd.errors.WeightdError) as raised:
                        self.client.load(directory, device="cpu")
                    self.assertIn(why, str(raised.exception))
                    load = self.weightctl("load", directory, "--quiet")
                    self.assertEqual(load.returncode, 1)
                    self.assertEqual(load.stderr.count("\n"), 1, load.stderr)
                    self.assertIn(os.path.basename(directory), load.stderr)
            # Nothing half-loaded.
            listed = [m.path for m in self.client.list()]
            self.assertFalse([p for p in listed if "bad_" in p], listed)
        finally:
            shutil.rmtree(outside, ignore_errors=True)

    def test_a_replaced_shard_is_a_new_entry(self):
        directory = self.copy("replaced")
        first = self.client.load(directory, device="cpu")
        shard = os.path.join(directory, "model-00001-of-00002.safetensors")
        tensors = read_safetensors(shard)
        with open(shard, "rb") as f:
            data = f.read()
        (size,) = struct.unpack("<Q", data[:8])
        # Same header, new values: the embedding's floats doubled.
        header = json.loads(data[8:8 + size])
        begin, end = header["model.embed.weight"]["data_offsets"]
        doubled = (tensors["model.embed.weight"] * 2).contiguous().numpy().tobytes()
        body = bytearray(data)
        body[8 + size + begin:8 + size + end] = doubled
        os.remove(shard)
        with open(shard, "wb") as f:
            f.write(bytes(body))
        second = self.client.load(directory, device="cpu")
        self.assertNotEqual(second.model_id, first.model_id)
        self.assertFalse(second.cache_hit)
        self.assertTrue(torch.equal(second["model.embed.weight"],
                                    tensors["model.embed.weight"] * 2))
        stale = [m for m in self.client.list() if m.model_id == first.model_id]
        self.assertTrue(all(m.stale for m in stale), stale)


if __name__ == "__main__":
    daemon_case.configure(sys.argv[1], sys.argv[3], weightctl=sys.argv[2])
    FIXTURES = os.path.abspath(sys.argv[4])
    unittest.main(argv=[sys.argv[0], "-v"])
