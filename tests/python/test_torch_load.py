"""weightd.load's tree rebuilding (every marker of loader/format/pytree.h), its argument checks,
and its path through the fake daemon: tensors put in their places, Parameters, map_location
callables, refusals. The real daemon and real torch.load: tests/integration."""
import collections
import json
import os
import unittest

import grpc

import weightd
from fake_daemon import FakeDaemon

try:
    import torch
except ImportError:
    torch = None

if torch is not None:
    from weightd._tree import TreeBuilder

needs_torch = unittest.skipIf(torch is None, "torch is not installed")


@needs_torch
class TreeTest(unittest.TestCase):
    def build(self, tree, tensors=None):
        tensors = tensors or {}
        refs = []

        def tensor(name, parameter):
            refs.append((name, parameter))
            return tensors[name]

        return TreeBuilder(torch, tensor).build(json.loads(json.dumps(tree))), refs

    def test_plain_json_is_plain_python(self):
        value, _ = self.build({"a": [1, 2.5, "s", None, True], "b": {}})
        self.assertEqual(value, {"a": [1, 2.5, "s", None, True], "b": {}})
        self.assertIs(type(value), dict)

    def test_every_marker(self):
        cases = [
            ({"__tuple__": [1, {"__tuple__": []}]}, (1, ())),
            ({"__size__": [2, 3]}, torch.Size([2, 3])),
            ({"__set__": [1, 2]}, {1, 2}),
            ({"__frozenset__": ["a"]}, frozenset(["a"])),
            ({"__slice__": [1, None, 2]}, slice(1, None, 2)),
            ({"__int__": "1180591620717411303424"}, 2 ** 70),
            ({"__int__": "-1180591620717411303424"}, -2 ** 70),
            ({"__float__": "inf"}, float("inf")),
            ({"__float__": "-inf"}, float("-inf")),
            ({"__complex__": [1.0, -2.0]}, complex(1, -2)),
            ({"__bytes__": "AP8="}, b"\x00\xff"),
            ({"__bytearray__": "eHk="}, bytearray(b"xy")),
            ({"__device__": "cuda:1"}, torch.device("cuda:1")),
            ({"__dtype__": "bfloat16"}, torch.bfloat16),
            ({"__global__": "torch.strided"}, torch.strided),
        ]
        for tree, want in cases:
            with self.subTest(tree=tree):
                got, _ = self.build(tree)
                self.assertIs(type(got), type(want))
                self.assertEqual(got, want)
        nan, _ = self.build({"__float__": "nan"})
        self.assertNotEqual(nan, nan)

    def test_dicts_keep_key_types_classes_and_attributes(self):
        tree = {"__items__": [[1, "int"], [{"__tuple__": [1, "a"]}, "tuple"],
                              [{"__frozenset__": [2]}, "frozenset"], [None, "none"],
                              ["__marker_like__", {"__class__": "collections.OrderedDict",
                                                   "w": 1, "__state__": {
                                                       "_metadata": {"": {"version": 1}}}}]]}
        value, _ = self.build(tree)
        self.assertEqual(list(value), [1, (1, "a"), frozenset([2]), None, "__marker_like__"])
        inner = value["__marker_like__"]
        self.assertIs(type(inner), collections.OrderedDict)
        self.assertEqual(inner, {"w": 1})
        self.assertEqual(inner._metadata, {"": {"version": 1}})
        counter, _ = self.build({"__class__": "collections.Counter", "a": 2})
        self.assertIs(type(counter), collections.Counter)
        odict, _ = self.build({"__class__": "collections.OrderedDict",
                               "__items__": [[3, "x"], [1, "y"]]})
        self.assertEqual(list(odict.items()), [(3, "x"), (1, "y")])

    def test_tensor_references(self):
        t = torch.arange(3)
        value, refs = self.build({"a": {"__tensor__": "a"},
                                  "p": [{"__tensor__": "p", "__parameter__": True}]},
                                 {"a": t, "p": t})
        self.assertIs(value["a"], t)
        self.assertEqual(refs, [("a", False), ("p", True)])

    def test_what_cannot_be_rebuilt_is_refused_by_name(self):
        cases = [({"__storage__": 0}, "bare storage"),
                 ({"__repr__": "tensor(1)"}, "tensor\\(1\\)"),
                 ({"__class__": "__torch__.M", "a": 1}, "__torch__.M object"),
                 ({"__global__": "os.system"}, "os.system"),
                 ({"__global__": "torch.load"}, "torch.load"),
                 ({"__dtype__": "no_such_dtype"}, "torch.no_such_dtype"),
                 ({"__what__": 1}, "unknown marker"),
                 ({"__int__": "12x"}, "bad big int"),
                 ({"__bytes__": "!!"}, "bad base64"),
                 ({"__items__": [[1]]}, "bad dict item"),
                 ({"__items__": [[[1], 2]]}, "unhashable dict key")]
        for tree, message in cases:
            with self.subTest(tree=tree):
                with self.assertRaisesRegex(weightd.WeightdError, message):
                    self.build(tree)

    def test_depth_is_bounded_as_the_daemons(self):
        def nested(depth):
            tree = 1
            for i in range(depth):
                tree = [tree] if i % 3 == 0 else {"__tuple__": [tree]} if i % 3 == 1 else \
                    {"__class__": "collections.OrderedDict", "k": tree}
            return tree
        TreeBuilder(torch, None).build(nested(199))
        with self.assertRaisesRegex(weightd.WeightdError, "deeper than 200"):
            TreeBuilder(torch, None).build(nested(300))


@needs_torch
class LoadThroughFakeDaemonTest(unittest.TestCase):
    compact = False

    def setUp(self):
        self.daemon = FakeDaemon()
        self.daemon.compact = self.compact
        self.addCleanup(self.daemon.stop)
        self.model_id, self.fixture = self.daemon.add_fixture()
        self.client = weightd.Client(self.daemon.address, timeout=10)
        self.addCleanup(self.client.close)
        self.path = os.path.join(self.daemon.root, "tree.pt")
        with open(self.path, "wb") as f:
            f.write(b"placeholder: the fake daemon describes it")

    def serve(self, tree, names=("a.weight", "a.weight_t", "c.int64"), fmt="torch-zip",
              extra_tensors=()):
        d = self.fixture.description(self.model_id, names=list(names))
        d.format = fmt
        d.metadata_json = json.dumps(tree)
        d.tensors.extend(extra_tensors)
        self.daemon.register(self.path, self.model_id, d)

    def test_tree_with_tensors_in_their_places(self):
        self.serve({"__class__": "collections.OrderedDict",
                    "w": {"__tensor__": "a.weight", "__parameter__": True},
                    "nested": {"__tuple__": [{"__tensor__": "a.weight_t"}, 3]},
                    "ids": [{"__tensor__": "c.int64"}],
                    "__state__": {"_metadata": {"": {"version": 1}}}})
        value = weightd.load(self.path, client=self.client)
        self.assertIs(type(value), collections.OrderedDict)
        self.assertEqual(value._metadata, {"": {"version": 1}})
        self.assertIs(type(value["w"]), torch.nn.Parameter)
        self.assertTrue(value["w"].requires_grad)  # the fixture's a.weight has requires_grad
        self.assertEqual(value["nested"][1], 3)
        self.assertTrue(torch.equal(value["nested"][0], value["w"].detach().t()))
        self.assertEqual(value["ids"][0].tolist(), [-1, 2 ** 40, 7])
        # One storage: the view and the Parameter share it.
        self.assertEqual(value["nested"][0].storage().data_ptr(),
                         value["w"].storage().data_ptr())
        self.assertEqual(self.daemon.load_requests[-1].placement.target, "")  # saved places
        self.assertEqual(dict(self.daemon.load_requests[-1].placement.remap), {})

    def test_map_location_forms_reach_the_daemon(self):
        self.serve({"w": {"__tensor__": "a.weight"}})
        for form, target, remap in [("cpu", "cpu", {}), (torch.device("cpu"), "cpu", {}),
                                    ({"cuda:1": "cpu"}, "", {"cuda:1": "cpu"}),
                                    ({"cuda:1": torch.device("cpu")}, "", {"cuda:1": "cpu"})]:
            with self.subTest(map_location=form):
                weightd.load(self.path, form, client=self.client)
                request = self.daemon.load_requests[-1]
                self.assertEqual((request.placement.target, dict(request.placement.remap)),
                                 (target, remap))
        with self.assertRaisesRegex(TypeError, "map_location must be"):
            weightd.load(self.path, 3, client=self.client)
        with self.assertRaisesRegex(TypeError, "saved location tags"):
            weightd.load(self.path, {1: "cpu"}, client=self.client)

    def test_callable_gets_each_storage_once_on_the_cpu(self):
        self.serve({"w": {"__tensor__": "a.weight"}, "t": {"__tensor__": "a.weight_t"},
                    "i": {"__tensor__": "c.int64"}})
        calls = []

        def relocate(storage, tag):
            calls.append((tag, storage.device.type, storage.nbytes()))
            return storage.clone() if len(calls) == 1 else None

        value = weightd.load(self.path, relocate, client=self.client)
        self.assertEqual(self.daemon.load_requests[-1].placement.target, "cpu")
        self.assertEqual(sorted(calls), [("cpu", "cpu", 24), ("cpu", "cpu", 80)])
        self.assertTrue(torch.equal(value["t"], value["w"].t()))
        self.assertEqual(value["t"].storage().data_ptr(), value["w"].storage().data_ptr())
        with self.assertRaisesRegex(TypeError, "returned a str, not a storage"):
            weightd.load(self.path, lambda storage, tag: "cpu", client=self.client)

    def test_mmap_false_copies(self):
        self.serve({"w": {"__tensor__": "a.weight"}, "t": {"__tensor__": "a.weight_t"}})
        mapped = weightd.load(self.path, client=self.client)
        copied = weightd.load(self.path, mmap=False, client=self.client)
        self.assertTrue(torch.equal(copied["w"], mapped["w"]))
        self.assertNotEqual(copied["w"].data_ptr(), mapped["w"].data_ptr())
        self.assertEqual(copied["t"].storage().data_ptr(), copied["w"].storage().data_ptr())
        copied["w"].detach().add_(1)  # private memory: writable
        self.assertFalse(torch.equal(copied["w"], mapped["w"]))
        with self.assertRaisesRegex(TypeError, "mmap must be"):
            weightd.load(self.path, mmap="yes", client=self.client)

    def test_refusals(self):
        self.serve({"w": {"__tensor__": "a.weight"}})
        with self.assertRaisesRegex(ValueError, "weights_only=False is not supported"):
            weightd.load(self.path, weights_only=False, client=self.client)
        import io
        with self.assertRaisesRegex(TypeError, "no usable name"):
            weightd.load(io.BytesIO(b"PK"), client=self.client)
        with self.assertRaisesRegex(TypeError, "must be a path"):
            weightd.load(3, client=self.client)
        with open(self.path, "rb") as f:
            self.assertEqual(list(weightd.load(f, client=self.client)), ["w"])
        self.serve({"w": {"__tensor__": "missing"}})
        with self.assertRaisesRegex(weightd.WeightdError, "did not describe"):
            weightd.load(self.path, client=self.client)
        self.serve({"w": {"__tensor__": "a.weight"}}, fmt="safetensors")
        with self.assertRaisesRegex(ValueError, "safetensors file, which torch.load cannot"):
            weightd.load(self.path, client=self.client)
        self.serve({"w": {"__tensor__": "a.weight"}}, fmt="torchscript")
        with self.assertRaisesRegex(ValueError, "jit_load_state"):
            weightd.load(self.path, client=self.client)
        twice = self.fixture.description(self.model_id, names=["c.int64"]).tensors[0]
        self.serve({"w": {"__tensor__": "c.int64"}}, names=["c.int64"], extra_tensors=[twice])
        with self.assertRaisesRegex(weightd.WeightdError, "two tensors named 'c.int64'"):
            weightd.load(self.path, client=self.client)

    def test_jit_load_state(self):
        self.serve({"__class__": "__torch__.M", "training": True,
                    "weight": {"__tensor__": "a.weight"},
                    "sub": {"__class__": "__torch__.S", "training": True,
                            "ids": {"__tensor__": "c.int64"}}},
                   names=["a.weight", "c.int64"], fmt="torchscript")
        extra = {"note.txt": "", "absent": "x"}
        state = weightd.jit_load_state(self.path, extra, client=self.client)
        self.assertIs(type(state), collections.OrderedDict)
        self.assertEqual(list(state), ["a.weight", "c.int64"])
        self.assertFalse(state["a.weight"].requires_grad)  # state_dict() detaches
        self.assertEqual(list(state._metadata), ["", "sub"])
        self.assertEqual(extra, {"note.txt": b"hello", "absent": b""})

    def test_default_client_follows_the_environment(self):
        self.serve({"w": {"__tensor__": "a.weight"}})
        old = os.environ.get("WEIGHTD_ADDRESS")
        os.environ["WEIGHTD_ADDRESS"] = self.daemon.address
        try:
            self.assertEqual(list(weightd.load(self.path)), ["w"])
            self.assertEqual(weightd.default_client().address, self.daemon.address)
            self.assertIs(weightd.default_client(), weightd.default_client())
        finally:
            if old is None:
                del os.environ["WEIGHTD_ADDRESS"]
            else:
                os.environ["WEIGHTD_ADDRESS"] = old

    def test_load_into_copies_where_assign_is_missing(self):
        d = self.fixture.description(self.model_id, names=["a.weight"])
        self.daemon.register(self.path, self.model_id, d)
        module = torch.nn.Module()
        module.a = torch.nn.Linear(5, 4, bias=False, device="meta")
        result = weightd.load_into(module, self.path, assign=False, client=self.client)
        self.assertEqual((result.missing_keys, result.unexpected_keys), ([], []))
        self.assertFalse(module.a.weight.is_meta)
        self.assertTrue(torch.equal(module.a.weight.detach(),
                                    torch.arange(20, dtype=torch.float32).reshape(4, 5)))
        module.a.weight.data.add_(1)  # the module's own memory
        with self.assertRaises(RuntimeError):  # strict: wrong names
            weightd.load_into(torch.nn.Linear(5, 4, bias=False), self.path,
                              client=self.client)


class LoadThroughFakeDaemonPackedTest(LoadThroughFakeDaemonTest):
    """The same results from the packed table, which weightd.load, jit_load_state and
    load_into read in bulk: none of them expands it into Model.description."""
    compact = True

    def setUp(self):
        super().setUp()
        from unittest import mock

        def expanded(model):
            raise AssertionError("Model.description expanded the packed table")

        patcher = mock.patch.object(weightd.Model, "description", property(expanded))
        patcher.start()
        self.addCleanup(patcher.stop)


if __name__ == "__main__":
    unittest.main()
