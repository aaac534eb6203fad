"""Property-based fuzzing of every module's arguments and of the filters (Hypothesis; see fuzz_harness.py).

Hypothesis is a dev dependency of the main venv only: on the other target Pythons (scripts/test.sh runs their
unit tests with --ignore=tests/unit/fuzz) a missing Hypothesis skips these tests, but where
VIRTOPS_FUZZ_REQUIRED is set (scripts/test.sh's fuzz stage) it fails them, so the main run never passes
without fuzzing. The summary prints how many inputs each module and filter got, and how many failed.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

if importlib.util.find_spec("hypothesis") is None:
    if os.environ.get("VIRTOPS_FUZZ_REQUIRED"):
        raise pytest.UsageError(
            "tests/unit/fuzz: Hypothesis is not installed in this venv, and VIRTOPS_FUZZ_REQUIRED is set "
            "(pip install -r requirements-dev.txt)."
        )
    collect_ignore_glob = ["test_*.py"]
    HAVE_HYPOTHESIS = False
else:
    HAVE_HYPOTHESIS = True


def pytest_terminal_summary(terminalreporter):
    if not HAVE_HYPOTHESIS:
        terminalreporter.write_line("fuzz: Hypothesis is not installed here; tests/unit/fuzz was not run")
        return
    import fuzz_harness

    counts = fuzz_harness.COUNTS
    if not counts:
        return
    terminalreporter.section("fuzz")
    total_inputs = total_failed = 0
    for target in sorted(counts):
        c = counts[target]
        if c["status"] != "ran":
            terminalreporter.write_line(f"fuzz: {target} not run: {c['status']}")
            continue
        total_inputs += c["inputs"]
        total_failed += c["failed"]
        slow = f" (slowest input {c['slowest']:.1f} s)" if c["slowest"] >= 5 else ""
        terminalreporter.write_line(f"fuzz: {target} {c['inputs']} inputs, {c['failed']} failed{slow}")
        if os.environ.get("VIRTOPS_FUZZ_VERBOSE") and c["outcomes"]:
            outcomes = ", ".join(f"{k} {v}" for k, v in sorted(c["outcomes"].items(), key=lambda kv: -kv[1]))
            terminalreporter.write_line(f"        {c['seconds']:.1f} s; outcomes: {outcomes}")
    skipped = sum(1 for c in counts.values() if c["status"] != "ran")
    terminalreporter.write_line(
        f"fuzz: total {total_inputs} inputs over {len(counts) - skipped} targets, {total_failed} failed"
        + (f"; {skipped} target(s) not run (KNOWN_BAD in tests/unit/fuzz/fuzz_harness.py)" if skipped else "")
    )
