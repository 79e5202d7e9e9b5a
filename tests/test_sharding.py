"""Losses on 8 host CPU devices: equal to the unsharded results, and no
vocabulary-wide all-gather in the compiled program (tests/sharded_cases.py)."""

import json
import os
import pathlib
import subprocess
import sys

SCRIPT = pathlib.Path(__file__).with_name("sharded_cases.py")
ROOT = SCRIPT.parents[1]


def run_sharded_cases():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=900, env=env
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def test_sharded_losses_equal_unsharded_without_vocabulary_wide_all_gathers():
    """One run of the 8-device script (a subprocess: the device count is fixed at start)."""
    lines = run_sharded_cases()
    results = [r for r in lines if "communication" not in r]
    check_communication_formulas({r["communication"]: r for r in lines if "communication" in r})
    seen = {(r["mode"], r["layout"]) for r in results if r["layout"] != "shard_map"}
    assert seen == {
        (m, lay) for m in ("Auto", "Explicit") for lay in ("data", "vocab", "data+vocab")
    }
    cases = {r["case"] for r in results}
    assert {
        "cross_entropy",
        "linear_cross_entropy_mean",
        "linear_cross_entropy_none",
        "linear_cross_entropy_mean_sliced",
        "linear_cross_entropy_mean_two_pass",
    } <= cases
    # 14 cases per mode and layout, two passes where w is not sharded, and data parallelism
    # by hand (shard_map) with a global normalizer.
    assert len(results) == 2 * (3 * 14 + 1) + 1
    assert {
        "cross_entropy_sequence_mean",
        "linear_cross_entropy_sequence_mean",
        "linear_kl_div",
        "data_parallel_normalizer",
    } <= cases
    for r in results:
        scale = max(1.0, abs(r["value"]))
        assert r["value_error"] <= 1e-5 * scale, r
        assert r["grad_error"] <= 1e-5, r
    offenders = [r for r in results if r["vocab_wide_all_gathers"]]
    assert not offenders, offenders[:3]
    # The fused losses keep each device's tokens where they are: no all-gather at all
    # (packed sequences excepted: their per-token ids are gathered for the sort).
    fused = [r for r in results if r["case"].startswith("linear") and "sequence" not in r["case"]]
    assert fused and not [r for r in fused if r["all_gathers"]], fused[:3]


def check_communication_formulas(measured):
    """docs/sharding.md's per-device all-reduce volumes, against the compiled programs on
    a (data=2, vocab=4) mesh: N = 48 tokens, H = 16, V = 1024, chunks of c = 8."""
    n, h, v, c, d, m = 48, 16, 1024, 8, 2, 4
    want = {
        "cross_entropy": {"loop": 0, "once": 3 * n // d + 2},
        "cross_entropy_smoothing": {"loop": 0, "once": 5 * n // d + 2},
        # Per chunk: over "vocab" 3c/D + cH/D, over "data" HV/M and the partial loss.
        "linear_cross_entropy": {"loop": 3 * c // d + c * h // d + h * v // m + 1, "once": 1},
        "linear_kl_div": {"loop": 6 * c // d + c * h // d + h * v // m + 1, "once": 0},
    }
    assert {k: {"loop": r["loop"], "once": r["once"]} for k, r in measured.items()} == want
