"""What the Python integration tests share: the real daemon over a test class's model root (the
hardening harness's Daemon) with one Python client on it, and weightctl run against it.

A test script calls configure() with its command-line paths before unittest.main(), and its test
classes derive from DaemonTestCase and call start_daemon(root) in setUpClass.
"""
import os
import shutil
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir,
                                "hardening"))
import harness  # noqa: E402

WEIGHTCTL = None


def configure(weightd, package_dir, weightctl=None):
    """The binaries under test and client/python, for this process and the client processes
    the tests start (they import weightd through PYTHONPATH)."""
    global WEIGHTCTL
    package_dir = os.path.abspath(package_dir)
    sys.path.insert(0, package_dir)
    os.environ["PYTHONPATH"] = package_dir
    harness.configure(os.path.abspath(weightd), package_dir)
    WEIGHTCTL = os.path.abspath(weightctl) if weightctl else None


class DaemonTestCase(unittest.TestCase):
    """One daemon and one weightd.Client per test class; tearDownClass closes both and removes
    the class's model root."""

    @classmethod
    def new_daemon(cls, root, extra=()):
        """A daemon on a private socket serving `root`; the caller stops it."""
        return harness.Daemon(root, extra=extra)

    @classmethod
    def start_daemon(cls, root, extra=()):
        cls.root = root
        cls.daemon = cls.new_daemon(root, extra)
        import weightd
        cls.weightd = weightd
        cls.client = weightd.Client(cls.daemon.address)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.daemon.stop()
        shutil.rmtree(cls.root, ignore_errors=True)

    def path(self, name):
        return os.path.join(self.root, name)

    def weightctl(self, *args, address=None):
        env = dict(os.environ, WEIGHTD_ADDRESS=address or self.daemon.address)
        return subprocess.run([WEIGHTCTL, *args], capture_output=True, text=True, env=env)

    def load_in_two_processes(self, path):
        """Two client processes, one after the other, each loading `path` on the host from a
        fresh daemon of its own: (their runs, each printing its tensor count; the daemon's
        stats after them)."""
        daemon = self.new_daemon(self.root)
        try:
            code = ("import sys, weightd; c = weightd.Client(sys.argv[1]); "
                    "t = c.load(sys.argv[2], device='cpu'); print(len(t))")
            runs = [subprocess.run([sys.executable, "-c", code, daemon.address, path],
                                   capture_output=True, text=True) for _ in range(2)]
            return runs, self.weightd.Client(daemon.address).stats()
        finally:
            daemon.stop()
