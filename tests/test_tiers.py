"""The quick and exhaustive tiers split the suite: every test is in exactly one, and the
quick tier holds tests of every test module and example."""

import ast
import pathlib
import re
import subprocess
import sys

import pytest

import jaxloss as jl

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
    # Besides its docstring example, every public function is called by a quick test.
    called = set().union(*(names_called(node) for node in quick - doctests))
    assert set(jl.__all__) - called == set()


def names_called(node):
    """The public functions named in the body of the test function that ``node`` runs
    (``jl.<name>`` or the name quoted) or in its parameters' id."""
    path, name = node.split("::")[0], re.sub(r"\[.*", "", node.split("::")[-1])
    params = node.split("::")[-1][len(name) :]
    source = (ROOT / path).read_text()
    (function,) = [
        f for f in ast.walk(ast.parse(source)) if isinstance(f, ast.FunctionDef) and f.name == name
    ]
    body = ast.get_source_segment(source, function)
    pattern = r"\bjl\.{0}\b|[\"']{0}[\"']"
    return {n for n in jl.__all__ if re.search(pattern.format(n), body)} | {
        n for n in jl.__all__ if re.search(rf"\b{n}\b", params)
    }
