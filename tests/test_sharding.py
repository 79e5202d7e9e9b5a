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
    results = run_sharded_cases()
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
