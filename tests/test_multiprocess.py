"""The losses in a multi-process JAX program: 2 processes x 4 CPU devices, gloo
collectives (tests/multiprocess_cases.py), equal to the single-device results and with
no vocabulary-wide all-gather."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest

SCRIPT = pathlib.Path(__file__).with_name("multiprocess_cases.py")
ROOT = SCRIPT.parents[1]
PROCESSES = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def run_processes(timeout: float = 240.0) -> list[dict]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    port = _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, str(SCRIPT), str(port), str(PROCESSES), str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(PROCESSES)
    ]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=timeout))
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        outputs = [proc.communicate() for proc in procs]
        pytest.fail(f"timed out after {timeout} s:\n" + _shown(procs, outputs))
    if any(proc.returncode != 0 for proc in procs):
        pytest.fail("a process failed:\n" + _shown(procs, outputs))
    return [
        json.loads(line) for out, _ in outputs for line in out.splitlines() if line.startswith("{")
    ]


def _shown(procs, outputs) -> str:
    return "\n".join(
        f"--- process {i} (exit {proc.returncode}) ---\n{out[-3000:]}\n{err[-6000:]}"
        for i, (proc, (out, err)) in enumerate(zip(procs, outputs, strict=True))
    )


@pytest.mark.exhaustive
def test_losses_across_processes_equal_one_device():
    results = run_processes()
    cases = {(r["layout"], r["case"]) for r in results}
    assert cases == {
        (layout, case)
        for layout in ("batch", "vocab", "batch+vocab")
        for case in ("cross_entropy", "cross_entropy_sequence_mean")
    } | {
        ("tokens+vocab", "linear_cross_entropy"),
        ("tokens+vocab", "linear_kl_div"),
        ("batch", "cross_entropy_eager_token_weight"),
    }
    # Every process reports every case, each for its own shards.
    assert sorted(r["process"] for r in results) == sorted(list(range(PROCESSES)) * len(cases))
    for r in results:
        assert r["value_error"] <= 1e-5 * max(1.0, abs(r["value"])), r
        assert r["grad_error"] <= 1e-5, r
        assert r["vocab_wide_all_gathers"] == [], r
        if r["case"].startswith("linear"):  # each device's tokens stay where they are
            assert r["all_gathers"] == 0, r
