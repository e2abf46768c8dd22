#!/usr/bin/env python3
"""Counts test cases from the JUnit XML files Bazel's test runs wrote.

Usage: test_results.py BEP_JSON [BEP_JSON ...]
Reads each build-event JSON file (bazel --build_event_json_file), follows every test
result to its test.xml and counts test cases. A test target whose XML is missing or holds no
test case counts as one case, passed or failed by the target's own status. Prints
"FAILED: ..." lines for failures (a target that fails to build or analyse counts as one failed
test) and ends with "N passed, M failed, K skipped".
"""
import json
import os
import sys
import urllib.parse
import xml.etree.ElementTree as ElementTree


def file_path(uri):
    parsed = urllib.parse.urlparse(uri)
    return urllib.parse.unquote(parsed.path) if parsed.scheme == "file" else uri


def count_xml(path):
    """Returns (passed, failed, skipped) test cases in one JUnit XML file, or None."""
    try:
        root = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError):
        return None
    passed = failed = skipped = 0
    for case in root.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failed += 1
        elif case.find("skipped") is not None or case.get("result") == "skipped" or \
                case.get("status") == "notrun":
            skipped += 1
        else:
            passed += 1
    if passed + failed + skipped == 0:
        return None
    return passed, failed, skipped


def main(paths):
    totals = [0, 0, 0]
    failures = []
    for bep in paths:
        with open(bep) as events:
            for line in events:
                event = json.loads(line)
                aborted = event.get("aborted")
                if aborted is not None and aborted.get("reason") not in (None, "SKIPPED"):
                    # A target that could not be built or analysed counts as a failed test.
                    what = next(iter(event.get("id", {}).values()), {})
                    label = what.get("label") or what.get("pattern") or str(what)
                    failures.append("%s %s: %s" % (label, aborted.get("reason"),
                                                   aborted.get("description", "")[:200]))
                    totals[1] += 1
                    continue
                completed = event.get("completed")
                if completed is not None and completed.get("success") is False:
                    label = event["id"].get("targetCompleted", {}).get("label", "?")
                    failures.append("%s failed to build (%s)" % (label, bep))
                    totals[1] += 1
                    continue
                test_result = event.get("testResult")
                if test_result is None:
                    continue
                label = event["id"]["testResult"]["label"]
                status = test_result.get("status", "NO_STATUS")
                xml = None
                for output in test_result.get("testActionOutput", []):
                    if output.get("name") == "test.xml":
                        xml = file_path(output.get("uri", ""))
                counts = count_xml(xml) if xml and os.path.exists(xml) else None
                if counts is None:
                    counts = (1, 0, 0) if status == "PASSED" else (0, 1, 0)
                elif status != "PASSED" and counts[1] == 0:
                    # The binary failed outside any test case (crash, sanitizer report at exit).
                    counts = (counts[0], 1, counts[2])
                if status != "PASSED":
                    failures.append("%s %s (%s)" % (label, status, bep))
                for i in range(3):
                    totals[i] += counts[i]
    for failure in failures:
        print("FAILED: " + failure)
    print("%d passed, %d failed, %d skipped" % tuple(totals))
    return 1 if totals[1] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
