"""Real CUDA IPC (needs an NVIDIA GPU and torch with CUDA; skipped otherwise): a producer
process exports a CUDA allocation the way the daemon does (a cudaIpcMemHandle plus a byte
offset); this process loads it through weightd.Client and the fake daemon and gets CUDA tensors
on that memory, zero-copy."""
import gc
import json
import os
import subprocess
import sys
import unittest

import weightd
from weightd._proto import weightd_pb2 as pb
from fake_daemon import FakeDaemon

try:
    import torch
    HAVE_CUDA = torch.cuda.is_available()
except ImportError:
    torch, HAVE_CUDA = None, False

N = 1 << 16

PRODUCER = r"""
import json, sys, torch
x = torch.arange(%d, dtype=torch.float32, device="cuda:0") * 0.5
torch.cuda.synchronize()
storage = x.untyped_storage() if hasattr(x, "untyped_storage") else x.storage()._untyped()
share = storage._share_cuda_()
props = torch.cuda.get_device_properties(0)
uuid = getattr(props, "uuid", None)
uuid = bytes(uuid.bytes).hex() if hasattr(uuid, "bytes") else str(uuid)
print(json.dumps({"handle": bytes(share[1]).hex(), "size": int(share[2]),
                  "offset": int(share[3]), "uuid": uuid}), flush=True)
sys.stdin.read()
""" % N


@unittest.skipUnless(HAVE_CUDA, "no CUDA GPU: the real CUDA IPC path needs one")
class GpuIpcTest(unittest.TestCase):
    def setUp(self):
        self.producer = subprocess.Popen([sys.executable, "-c", PRODUCER],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.addCleanup(self._stop_producer)
        self.share = json.loads(self.producer.stdout.readline())
        self.daemon = FakeDaemon()
        self.addCleanup(self.daemon.stop)

    def _stop_producer(self):
        self.producer.stdin.close()
        self.producer.wait(30)

    def test_cuda_tensors_from_ipc_handle(self):
        share = self.share
        path = os.path.join(self.daemon.root, "gpu.pt")
        open(path, "wb").close()
        d = pb.ModelDescription(model_id="gpu-model", path=path, format="torch-zip")
        d.buffers.add().gpu.CopyFrom(pb.GpuArena(
            gpu_uuid="GPU-" + share["uuid"], gpu_index=0, ipc_handle=bytes.fromhex(share["handle"]),
            size=share["offset"] + share["size"], handle_kind=pb.GpuArena.CUDA_IPC))
        d.tensors.add(name="all", dtype="float32", shape=[N], stride=[1], byte_size=N * 4,
                      buffer_index=0, storage_byte_offset=share["offset"],
                      placed_location="cuda:0")
        d.tensors.add(name="matrix_t", dtype="float32", shape=[256, 128], stride=[1, 256],
                      storage_offset=1024, byte_size=256 * 128 * 4, buffer_index=0,
                      storage_byte_offset=share["offset"], placed_location="cuda:0")
        self.daemon.register(path, "gpu-model", d)
        expected = torch.arange(N, dtype=torch.float32, device="cuda:0") * 0.5
        with weightd.Client(self.daemon.address) as client:
            model = client.load(path, device="cuda:0")
            self.assertEqual(model["all"].device.type, "cuda")
            self.assertTrue(torch.equal(model["all"], expected))
            self.assertTrue(torch.equal(model["matrix_t"],
                                        expected[1024:1024 + 128 * 256].view(128, 256).t()))
            self.assertEqual(model["all"].data_ptr(), model["matrix_t"].data_ptr() - 1024 * 4)
            session = client.session_id
            again = client.load(path, device="cuda:0")  # the handle is opened once
            self.assertEqual(again["all"].data_ptr(), model["all"].data_ptr())
            del model, again
            gc.collect()
            self.assertTrue(self.daemon.wait_for(
                lambda: self.daemon.leases[(session, "gpu-model")] == 0))
            torch.cuda.synchronize()


if __name__ == "__main__":
    unittest.main()
