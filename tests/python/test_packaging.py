"""client/python builds offline into a wheel whose installed package knows the daemon's
version (the repository's VERSION) without the repository."""
import os
import shutil
import subprocess
import sys
import tempfile
import unittest
import zipfile

REPO = os.environ.get("WEIGHTD_REPO_ROOT") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))


def _has(module):
    return subprocess.run([sys.executable, "-c", "import " + module],
                          capture_output=True).returncode == 0


@unittest.skipUnless(_has("pip") and _has("setuptools") and _has("wheel"),
                     "pip, setuptools and wheel are needed to build the wheel")
class WheelTest(unittest.TestCase):
    def test_offline_wheel_imports_from_a_clean_directory(self):
        work = tempfile.mkdtemp(prefix="weightd-wheel-")
        self.addCleanup(shutil.rmtree, work, ignore_errors=True)
        # A copy (runfiles are read-only symlinks; the build writes beside its sources).
        source = os.path.join(work, "repo", "client", "python")
        os.makedirs(source)
        shutil.copy(os.path.join(REPO, "VERSION"), os.path.join(work, "repo", "VERSION"))
        for name in ("pyproject.toml", "setup.py", "README.md"):
            shutil.copy(os.path.join(REPO, "client", "python", name), source)
        shutil.copytree(os.path.join(REPO, "client", "python", "weightd"),
                        os.path.join(source, "weightd"),
                        ignore=shutil.ignore_patterns("__pycache__", "_version.py"))
        with open(os.path.join(REPO, "VERSION")) as f:
            version = f.readline().strip()
        dist = os.path.join(work, "dist")
        env = dict(os.environ, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
        env.pop("PYTHONPATH", None)
        build = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
             source, "-w", dist], capture_output=True, text=True, env=env, timeout=300)
        self.assertEqual(build.returncode, 0, build.stdout + build.stderr)
        wheel = os.path.join(dist, "weightd-%s-py3-none-any.whl" % version)
        self.assertTrue(os.path.exists(wheel), os.listdir(dist))
        with zipfile.ZipFile(wheel) as z:
            metadata = z.read("weightd-%s.dist-info/METADATA" % version).decode()
            self.assertIn("weightd/_proto/weightd_pb2.py", z.namelist())
        requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist")]
        self.assertTrue(any(r.startswith("Requires-Dist: grpcio") for r in requires), requires)
        self.assertTrue(any(r.startswith("Requires-Dist: protobuf") for r in requires), requires)
        self.assertTrue(any("torch" in r and "extra ==" in r for r in requires), requires)
        self.assertFalse(any("torch" in r and "extra" not in r for r in requires), requires)

        site = os.path.join(work, "site")
        install = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--no-deps", "--target", site, wheel],
            capture_output=True, text=True, env=env, timeout=300)
        self.assertEqual(install.returncode, 0, install.stdout + install.stderr)
        clean = os.path.join(work, "clean")
        os.makedirs(clean)
        code = ("import weightd, weightd._version; "
                "print(weightd.__version__); print(weightd.__file__); "
                "print(callable(weightd.load), callable(weightd.load_into))")
        done = subprocess.run([sys.executable, "-c", code], cwd=clean, capture_output=True,
                              text=True, env=dict(env, PYTHONPATH=site), timeout=60)
        self.assertEqual(done.returncode, 0, done.stderr)
        lines = done.stdout.split("\n")
        self.assertEqual(lines[0], version)
        self.assertTrue(lines[1].startswith(os.path.join(site, "weightd")), lines[1])
        self.assertEqual(lines[2], "True True")

    def test_checkout_reads_the_version_file(self):
        import weightd
        with open(os.path.join(REPO, "VERSION")) as f:
            self.assertEqual(weightd.__version__, f.readline().strip())


if __name__ == "__main__":
    unittest.main()
