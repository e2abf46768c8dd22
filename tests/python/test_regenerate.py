"""The committed generated code equals what client/python/regenerate.sh produces now."""
import os
import subprocess
import tempfile
import unittest

import weightd._proto

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.environ.get("WEIGHTD_REPO_ROOT") or os.path.dirname(os.path.dirname(HERE))


@unittest.skipUnless(os.path.exists("/usr/bin/protoc") and
                     os.path.exists("/usr/bin/grpc_python_plugin"),
                     "Debian's protoc / grpc_python_plugin are not installed")
class RegenerateTest(unittest.TestCase):
    def test_committed_code_is_current(self):
        committed = os.path.dirname(os.path.abspath(weightd._proto.__file__))
        with tempfile.TemporaryDirectory() as out:
            subprocess.run(["bash", os.path.join(ROOT, "client", "python", "regenerate.sh"), out],
                           check=True)
            for name in ("weightd_pb2.py", "weightd_pb2_grpc.py"):
                with open(os.path.join(out, name), "rb") as f:
                    fresh = f.read()
                with open(os.path.join(committed, name), "rb") as f:
                    current = f.read()
                self.assertEqual(fresh, current, "%s is stale: run client/python/regenerate.sh"
                                 % name)
            with open(os.path.join(out, "weightd_pb2_grpc.py")) as f:
                self.assertIn("from . import weightd_pb2 as ", f.read())


if __name__ == "__main__":
    unittest.main()
