"""Tensor-parallel slices through the real daemon, weightctl and the Python client.

A small Llama-like checkpoint (written here with real torch) as a .bin file, a safetensors
file, and .bin and safetensors model directories of two shards each. Checks: for W in 1, 2, 4
and every rank, on the host and on a fake GPU, each tensor equals torch's narrow of torch.load
(the built-in "llama" rules and explicit rules), ranks concatenated give the whole tensor and
replicated tensors are whole on every rank; `weightctl load --tp --json --hash` prints the
sliced shapes and the slice's sha256; W ranks in W processes at once on W fake GPUs read the
checkpoint's bytes once between them and each GPU holds only its rank's bytes; bad specs are
refused with the reason; `weightctl inspect --tp` (offline) prints exactly what a cpu
`load --tp --json --hash` prints.

Usage: tensor_parallel_test.py WEIGHTD WEIGHTCTL PYTHON_PACKAGE_DIR
"""
import collections
import hashlib
import json
import os
import struct
import subprocess
import sys
import tempfile
import unittest

import torch

import daemon_case

HIDDEN, INTERMEDIATE, VOCAB, LAYERS = 16, 32, 64, 2
# What the built-in "llama" rule set splits, and on which dim.
LLAMA_DIMS = {"q_proj.weight": 0, "k_proj.weight": 0, "v_proj.weight": 0,
              "gate_proj.weight": 0, "up_proj.weight": 0, "o_proj.weight": 1,
              "down_proj.weight": 1, "embed_tokens.weight": 0, "lm_head.weight": 0}


def llama_state():
    torch.manual_seed(12)
    state = collections.OrderedDict()
    state["model.embed_tokens.weight"] = torch.randn(VOCAB, HIDDEN)
    for i in range(LAYERS):
        p = "model.layers.%d." % i
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            state[p + "self_attn.%s.weight" % name] = torch.randn(HIDDEN, HIDDEN)
        state[p + "mlp.gate_proj.weight"] = torch.randn(INTERMEDIATE, HIDDEN)
        state[p + "mlp.up_proj.weight"] = torch.randn(INTERMEDIATE, HIDDEN)
        state[p + "mlp.down_proj.weight"] = torch.randn(HIDDEN, INTERMEDIATE)
        state[p + "input_layernorm.weight"] = torch.randn(HIDDEN)
    state["model.norm.weight"] = torch.randn(HIDDEN)
    state["lm_head.weight"] = torch.randn(VOCAB, HIDDEN)
    return state


def llama_dim(name):
    for suffix, dim in LLAMA_DIMS.items():
        if name.endswith(suffix):
            return dim
    return None


def write_safetensors(path, tensors):
    header, offset, blobs = {}, 0, []
    for name, t in tensors.items():
        data = t.contiguous().numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def write_directory(path, state, safetensors):
    os.makedirs(path)
    names = list(state)
    halves = [names[:len(names) // 2], names[len(names) // 2:]]
    weight_map = {}
    for i, part in enumerate(halves):
        if safetensors:
            shard = "model-%05d-of-00002.safetensors" % (i + 1)
            write_safetensors(os.path.join(path, shard), {n: state[n] for n in part})
        else:
            shard = "pytorch_model-%05d-of-00002.bin" % (i + 1)
            torch.save({n: state[n] for n in part}, os.path.join(path, shard))
        weight_map.update({n: shard for n in part})
    index = "model.safetensors.index.json" if safetensors else "pytorch_model.bin.index.json"
    with open(os.path.join(path, index), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)


def tensor_bytes(state):
    return sum(t.numel() * t.element_size() for t in state.values())


def align(n, to):
    return (n + to - 1) // to * to


class TensorParallelTest(daemon_case.DaemonTestCase):
    @classmethod
    def setUpClass(cls):
        root = tempfile.mkdtemp(prefix="weightd-tp-")
        cls.state = llama_state()
        torch.save(cls.state, os.path.join(root, "model.bin"))
        write_safetensors(os.path.join(root, "model.safetensors"), cls.state)
        write_directory(os.path.join(root, "bin_dir"), cls.state, safetensors=False)
        write_directory(os.path.join(root, "st_dir"), cls.state, safetensors=True)
        cls.cases = ["model.bin", "model.safetensors", "bin_dir", "st_dir"]
        cls.start_daemon(root, extra=["--fake_gpus=4"])

    def expected(self, name, rank, world, dim):
        whole = self.state[name]
        if dim is None:
            return whole
        n = whole.shape[dim]
        return whole.narrow(dim, rank * n // world, n // world)

    def test_every_rank_gets_torch_narrow(self):
        for case in self.cases:
            for device in ("cpu", "cuda:0"):
                for world in (1, 2, 4):
                    parts = collections.defaultdict(list)
                    for rank in range(world):
                        with self.subTest(case=case, device=device, rank=rank, world=world):
                            got = self.client.load(self.path(case), device=device,
                                                   shard=self.weightd.Shard(rank, world))
                            self.assertEqual(sorted(got), sorted(self.state))
                            for name, tensor in got.items():
                                want = self.expected(name, rank, world, llama_dim(name))
                                self.assertEqual(tuple(tensor.shape), tuple(want.shape), name)
                                self.assertTrue(torch.equal(tensor.cpu(), want), name)
                                parts[name].append(tensor.cpu().clone())
                            del got
                    for name, pieces in parts.items():
                        dim = llama_dim(name)
                        if dim is None:
                            for piece in pieces:  # replicated: whole on every rank
                                self.assertTrue(torch.equal(piece, self.state[name]), name)
                        else:
                            self.assertTrue(torch.equal(torch.cat(pieces, dim),
                                                        self.state[name]), name)

    def test_explicit_rules_and_casts(self):
        rules = [("*.o_proj.weight", 1), ("*norm.weight", 0), ("*", 0)]
        for device in ("cpu", "cuda:1"):
            for rank in range(2):
                got = self.client.load(self.path("model.safetensors"), device=device,
                                       dtype="bfloat16",
                                       shard=self.weightd.Shard(rank, 2, rules))
                for name, tensor in got.items():
                    dim = 1 if name.endswith("o_proj.weight") else 0
                    want = self.expected(name, rank, 2, dim).to(torch.bfloat16)
                    self.assertEqual(tensor.dtype, torch.bfloat16)
                    self.assertTrue(torch.equal(tensor.cpu(), want), (device, name))

    def test_weightctl_prints_sliced_shapes_strides_and_hashes(self):
        rules = os.path.join(self.root, "rules.json")
        with open(rules, "w") as f:
            json.dump([["*.down_proj.weight", 1], ["*.q_proj.weight", 0]], f)
        for device in ("cpu", "cuda:0"):
            run = self.weightctl("load", self.path("model.bin"), "--device", device, "--json",
                                 "--hash", "--quiet", "--tp", "1/2", "--tp_rules", rules)
            self.assertEqual(run.returncode, 0, run.stderr)
            listing = {t["name"]: t for t in json.loads(run.stdout)["tensors"]}
            for name, whole in self.state.items():
                dim = (1 if name.endswith("down_proj.weight") else
                       0 if name.endswith("q_proj.weight") else None)
                want = self.expected(name, 1, 2, dim)
                self.assertEqual(listing[name]["shape"], list(want.shape), name)
                if device == "cpu":  # a view of the file: narrow keeps the strides
                    self.assertEqual(listing[name]["stride"], list(whole.stride()), name)
                else:  # the slice's own contiguous bytes
                    self.assertEqual(listing[name]["stride"],
                                     list(want.contiguous().stride()), name)
                digest = hashlib.sha256(want.contiguous().numpy().tobytes()).hexdigest()
                self.assertEqual(listing[name]["sha256"], digest, (device, name))

    def test_inspect_tp_equals_load_tp_and_torch_narrow(self):
        rules = os.path.join(self.root, "inspect_rules.json")
        with open(rules, "w") as f:
            json.dump([["*.down_proj.weight", 1], ["*.q_proj.weight", 0], ["*norm*", 0]], f)

        def explicit_dim(name):
            return (1 if name.endswith("down_proj.weight") else
                    0 if name.endswith("q_proj.weight") or "norm" in name else None)
        for case in self.cases:
            for world in (1, 2, 4):
                for rank in range(world):
                    for rule_args, dim_of in (([], llama_dim),
                                              (["--tp_rules", rules], explicit_dim)):
                        tp = ["--tp", "%d/%d" % (rank, world), *rule_args]
                        with self.subTest(case=case, tp=tp):
                            inspect = self.weightctl("inspect", self.path(case), "--json",
                                                     "--hash", *tp)
                            self.assertEqual(inspect.returncode, 0, inspect.stderr)
                            load = self.weightctl("load", self.path(case), "--device", "cpu",
                                                  "--json", "--hash", "--quiet", *tp)
                            self.assertEqual(load.returncode, 0, load.stderr)
                            offline = json.loads(inspect.stdout)
                            self.assertEqual(offline, json.loads(load.stdout))
                            listing = {t["name"]: t for t in offline["tensors"]}
                            for name, whole in self.state.items():
                                want = self.expected(name, rank, world, dim_of(name))
                                got = listing[name]
                                self.assertEqual(got["shape"], list(want.shape), name)
                                self.assertEqual(got["stride"], list(whole.stride()), name)
                                digest = hashlib.sha256(
                                    want.contiguous().numpy().tobytes()).hexdigest()
                                self.assertEqual(got["sha256"], digest, name)
        # The table form lists the slices' shapes too.
        table = self.weightctl("inspect", self.path("model.bin"), "--tp", "1/2")
        self.assertEqual(table.returncode, 0, table.stderr)
        self.assertIn("[%d, %d]" % (VOCAB // 2, HIDDEN), table.stdout)
        for args, reason in [(["--tp", "2/2"], "rank 2 is not in [0, 2)"),
                             (["--tp", "0/0"], "world size 0"),
                             (["--tp", "x"], "--tp expects RANK/WORLD"),
                             (["--tp_rules", rules], "--tp_rules needs --tp"),
                             (["--tp", "0/2", "--tp_rules", self.path("none.json")],
                              "none.json"),
                             (["--tp", "0/3"], "does not split evenly"),
                             (["--tp", "0/2", "--tp_rule_set", "nope"],
                              "no built-in shard rule set")]:
            with self.subTest(args=args):
                run = self.weightctl("inspect", self.path("st_dir"), *args)
                self.assertNotEqual(run.returncode, 0)
                self.assertIn(reason, run.stderr)

    def test_ranks_at_once_read_the_checkpoint_once(self):
        world = 4
        for case in ("model.bin", "model.safetensors"):
            with self.subTest(case=case):
                daemon = self.new_daemon(self.root, extra=["--fake_gpus=%d" % world])
                try:
                    before = self.weightd.Client(daemon.address).stats()
                    # A rank stuck past 100 s prints its Python stacks (faulthandler).
                    script = ("import faulthandler, sys, weightd\n"
                              "faulthandler.dump_traceback_later(100)\n"
                              "rank, world = int(sys.argv[3]), int(sys.argv[4])\n"
                              "with weightd.Client(sys.argv[1]) as c:\n"
                              "    m = c.load(sys.argv[2], device='cuda:%d' % rank,\n"
                              "               shard=weightd.Shard(rank, world))\n"
                              "    print(m.description.bytes_read)\n")
                    procs = [subprocess.Popen(
                        [sys.executable, "-c", script, daemon.address, self.path(case),
                         str(rank), str(world)], stdout=subprocess.PIPE, text=True)
                        for rank in range(world)]
                    read_by_ranks = 0
                    for rank, proc in enumerate(procs):
                        try:
                            out, _ = proc.communicate(timeout=120)
                        except subprocess.TimeoutExpired:
                            for p in procs:
                                p.kill()
                            self.fail("rank %d/%d of %s did not finish in 120 s\n%s"
                                      % (rank, world, case, daemon.diagnose()))
                        self.assertEqual(proc.returncode, 0)
                        read_by_ranks += int(out.strip())
                    stats = self.weightd.Client(daemon.address).stats()
                    total = tensor_bytes(self.state)
                    self.assertEqual(stats.bytes_read - before.bytes_read, total)
                    self.assertEqual(read_by_ranks, total)
                    self.assertEqual(stats.loads - before.loads, world)
                    # Each GPU holds its rank's slices and the replicated tensors only.
                    gpus = {g.index: g.uuid for g in
                            self.weightd.Client(daemon.address).server_info().gpus}
                    tiers = {t.tier: t.used_bytes for t in stats.tiers}
                    for rank in range(world):
                        held = 0
                        for name, t in self.state.items():
                            part = self.expected(name, rank, world, llama_dim(name))
                            held += align(part.numel() * part.element_size(), 256)
                        self.assertEqual(tiers[gpus[rank]], held, rank)
                        self.assertLess(held, align(total, 256))
                finally:
                    daemon.stop()

    def test_bad_specs_are_refused_with_the_reason(self):
        path = self.path("model.bin")
        bad_rules = os.path.join(self.root, "bad_rules.json")
        with open(bad_rules, "w") as f:
            f.write('[["*.q_proj.weight", "zero"]]')
        past = os.path.join(self.root, "past.json")
        with open(past, "w") as f:
            json.dump([["model.norm.weight", 1]], f)
        uneven = os.path.join(self.root, "uneven.json")
        with open(uneven, "w") as f:
            json.dump([["model.norm.weight", 0]], f)
        cases = [
            (["--tp", "2/2"], "rank 2 is not in [0, 2)"),
            (["--tp", "0/0"], "world_size is 0"),
            (["--tp", "1"], "--tp expects RANK/WORLD"),
            (["--tp", "0/2", "--tp_rules", bad_rules], bad_rules),
            (["--tp", "0/2", "--tp_rules", self.path("missing.json")], "missing.json"),
            (["--tp", "0/2", "--tp_rules", past], "model.norm.weight of shape [16] on dim 1"),
            (["--tp", "0/3", "--tp_rules", uneven],
             "model.norm.weight of shape [16] does not split evenly on dim 0"),
            (["--tp", "0/2", "--tp_rule_set", "nope"], "no built-in shard rule set"),
        ]
        for args, reason in cases:
            with self.subTest(args=args):
                run = self.weightctl("load", path, "--quiet", *args)
                self.assertNotEqual(run.returncode, 0)
                self.assertIn(reason, run.stderr)
        for shard, reason in [(self.weightd.Shard(4, 4), "rank 4"),
                              (self.weightd.Shard(0, 0), "world_size is 0"),
                              (self.weightd.Shard(0, 2, [("model.norm.weight", 3)]),
                               "on dim 3")]:
            with self.subTest(shard=shard):
                with self.assertRaises(self.weightd.WeightdError) as caught:
                    self.client.load(path, device="cpu", shard=shard)
                self.assertIn(reason, str(caught.exception))

    def test_a_slice_is_its_own_cache_entry_and_a_hit_reads_nothing(self):
        path = self.path("model.safetensors")
        first = self.client.load(path, device="cuda:2", shard=self.weightd.Shard(0, 2))
        again = self.client.load(path, device="cuda:2", shard=self.weightd.Shard(0, 2))
        other = self.client.load(path, device="cuda:2", shard=self.weightd.Shard(1, 2))
        self.assertTrue(again.cache_hit)
        self.assertEqual(again.description.bytes_read, 0)
        self.assertEqual(again.model_id, first.model_id)
        self.assertNotEqual(other.model_id, first.model_id)
        self.assertIn("tp{0/2", first.placement)


if __name__ == "__main__":
    daemon_case.configure(sys.argv[1], sys.argv[3], weightctl=sys.argv[2])
    unittest.main(argv=[sys.argv[0], "-v"])
