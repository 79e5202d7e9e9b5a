"""The quick and exhaustive tiers split the suite: every test is in exactly one, and the
quick tier holds tests of every test module and example."""

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def collected(tier):
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "--tier", tier],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {line for line in proc.stdout.splitlines() if "::" in line}


@pytest.mark.exhaustive
def test_the_tiers_split_the_suite_and_the_quick_one_reaches_every_module():
    quick, exhaustive, everything = (collected(t) for t in ("quick", "exhaustive", "all"))
    assert quick and exhaustive
    assert not quick & exhaustive
    assert quick | exhaustive == everything
    files = {node.split("::")[0] for node in everything}
    modules = {f for f in files if f.startswith(("tests/", "examples/"))}
    assert modules == {
        node.split("::")[0] for node in quick if node.startswith(("tests/", "examples/"))
    } | {
        "tests/test_multiprocess.py",  # its smoke run is the lm_head example's two processes
        "tests/test_tiers.py",
    }
    doctests = {node for node in everything if node.startswith("jaxloss/")}
    assert doctests <= quick
