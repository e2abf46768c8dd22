"""Runs every test_*.py here with unittest; writes JUnit XML to $XML_OUTPUT_FILE (Bazel) so
each test case is counted. Exit status 1 when any test fails."""
import os
import sys
import time
import unittest
import xml.etree.ElementTree as ElementTree

HERE = os.path.dirname(os.path.abspath(__file__))


class RecordingResult(unittest.TextTestResult):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cases = []  # (test id, seconds, kind or None, text)
        self._started = 0.0

    def startTest(self, test):
        self._started = time.monotonic()
        super().startTest(test)

    def _record(self, test, kind=None, text=""):
        self.cases.append((test.id(), time.monotonic() - self._started, kind, text))

    def addSuccess(self, test):
        super().addSuccess(test)
        self._record(test)

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._record(test, "failure", self._exc_info_to_string(err, test))

    def addError(self, test, err):
        super().addError(test, err)
        self._record(test, "error", self._exc_info_to_string(err, test))

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self._record(test, "skipped", reason)

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self._record(test)

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._record(test, "failure", "unexpected success")


def write_xml(path, cases, seconds):
    suite = ElementTree.Element("testsuite", name="tests/python", tests=str(len(cases)),
                                failures=str(sum(c[2] == "failure" for c in cases)),
                                errors=str(sum(c[2] == "error" for c in cases)),
                                skipped=str(sum(c[2] == "skipped" for c in cases)),
                                time="%.3f" % seconds)
    for test_id, elapsed, kind, text in cases:
        module_class, _, name = test_id.rpartition(".")
        case = ElementTree.SubElement(suite, "testcase", classname=module_class, name=name,
                                      time="%.3f" % elapsed)
        if kind:
            child = ElementTree.SubElement(case, kind, message=text.splitlines()[-1] if text
                                           else kind)
            child.text = text
    root = ElementTree.Element("testsuites")
    root.append(suite)
    ElementTree.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def main(argv):
    sys.path.insert(0, HERE)
    loader = unittest.TestLoader()
    if argv:
        suite = loader.loadTestsFromNames(argv)
    else:
        suite = loader.discover(HERE, pattern="test_*.py", top_level_dir=HERE)
    runner = unittest.TextTestRunner(verbosity=2, resultclass=RecordingResult)
    started = time.monotonic()
    result = runner.run(suite)
    xml = os.environ.get("XML_OUTPUT_FILE")
    if xml:
        write_xml(xml, result.cases, time.monotonic() - started)
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
