"""Build-time version copy for pyproject.toml: the installed package knows the daemon's
version (weightd.__version__) without the repository."""
import os

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


def read_version():
    # The repository's VERSION (a checkout), else one shipped beside this file (an sdist).
    for path in (os.path.join(HERE, os.pardir, os.pardir, "VERSION"),
                 os.path.join(HERE, "VERSION")):
        try:
            with open(path) as f:
                version = f.readline().strip()
        except OSError:
            continue
        if version:
            return version
    raise SystemExit("weightd: no VERSION file next to %s or at the repository root" % HERE)


VERSION = read_version()


class BuildWithVersion(build_py):
    """Writes weightd/_version.py into the build tree, never into the source tree."""

    def run(self):
        super().run()
        target = os.path.join(self.build_lib, "weightd", "_version.py")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "w") as f:
            f.write("# Written by setup.py from the repository's VERSION file.\n"
                    "version = %r\n" % VERSION)


setup(version=VERSION, cmdclass={"build_py": BuildWithVersion})
