"""What the Python benchmarks against a real daemon share: their common arguments, and
tests/hardening/harness.py loaded from its path and configured with the daemon and package."""
import argparse
import contextlib
import importlib.util
import os


def argument_parser():
    """An ArgumentParser with --weightd, --package, --harness and --dir (all required)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--weightd", required=True, help="the weightd binary")
    parser.add_argument("--package", required=True, help="the Python client's directory")
    parser.add_argument("--harness", required=True, help="tests/hardening/harness.py")
    parser.add_argument("--dir", required=True, help="where checkpoints are written")
    return parser


def load_harness(args):
    """The harness module, configured; creates args.dir."""
    spec = importlib.util.spec_from_file_location("harness", args.harness)
    harness = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(harness)
    harness.configure(os.path.abspath(args.weightd), os.path.abspath(args.package))
    os.makedirs(args.dir, exist_ok=True)
    return harness


@contextlib.contextmanager
def running_daemon(harness, directory, paths):
    """A harness Daemon over `directory`; on leaving, it is stopped and the checkpoints written
    for it (`paths`) are removed."""
    daemon = harness.Daemon(directory)
    try:
        yield daemon
    finally:
        daemon.stop()
        for path in paths:
            os.unlink(path)
