"""The benchmark command runs end to end at a tiny size (a smoke run, not a timing)."""

import json
import subprocess
import sys

from jaxloss.benchmark import interleaved_medians


def test_benchmark_command_smoke(tmp_path):
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "jaxloss.benchmark",
            "--smoke",
            "--json",
            str(out_json),
            "--plot",
            str(out_png),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out_json.read_text())
    assert result["environment"]["backend"] == "cpu"
    names = {r["benchmark"] for r in result["losses"]}
    assert names == {
        "cross_entropy (index)",
        "cross_entropy (probs)",
        "bce_with_logits",
        "log_softmax (fwd+vjp)",
    }
    assert {r["dtype"] for r in result["losses"]} == {"float32", "bfloat16"}
    for row in result["losses"]:
        assert row["jaxloss_s"] > 0 and row["copy_s"] > 0 and row["baseline_s"] > 0
        assert abs(row["jaxloss_vs_copy"] - row["jaxloss_s"] / row["copy_s"]) < 1e-9
    for row in result["linear"]:
        assert 0 < row["fused_temp_bytes"] and 0 < row["naive_temp_bytes"]
        assert row["time_ratio"] > 0
        assert row["fused_rss_growth"] > 0 and row["naive_rss_growth"] > 0
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "cross_entropy (index)" in proc.stdout


def test_interleaved_medians_calls_each_thunk_repeat_times_plus_warmup():
    calls = {"a": 0, "b": 0}

    def make(name):
        def thunk():
            calls[name] += 1
            import jax.numpy as jnp

            return jnp.zeros(())

        return thunk

    times = interleaved_medians({"a": make("a"), "b": make("b")}, repeats=4)
    assert calls == {"a": 5, "b": 5}
    assert set(times) == {"a", "b"} and all(t >= 0 for t in times.values())


def test_a_linear_shape_above_the_flop_limit_says_it_was_not_timed_and_why(capsys):
    from jaxloss.benchmark import run_linear

    (row,) = run_linear(((16, 8, 32),), ["float32"], 1, time_limit_flops=0.0, measure_rss=False)
    assert "fused_s" not in row
    assert row["not_timed"].startswith("6·N·H·V = 0.0 TFLOP per call is above --max-linear-tflop")
    assert "not timed: 6·N·H·V" in capsys.readouterr().out
    (row,) = run_linear(((16, 8, 32),), ["float32"], 1, time_limit_flops=1e12, measure_rss=False)
    assert row["time_ratio"] > 0 and "not_timed" not in row
