"""The benchmark command runs end to end at a tiny size (a smoke run, not a timing)."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from benchmarks import cli, measure
from benchmarks import ctc as ctc_suite
from benchmarks import linear as linear_suite
from benchmarks import losses as loss_suite
from benchmarks import matmuls as matmul_suite
from benchmarks import memory as memory_suite


@pytest.mark.exhaustive
def test_benchmark_command_smoke(tmp_path):
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--smoke",
            "--json",
            str(out_json),
            "--plot",
            str(out_png),
            "--no-rss",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out_json.read_text())
    assert result["environment"]["backend"] == "cpu"
    names = {r["benchmark"] for r in result["losses"]}
    assert names == {case.name for case in loss_suite.loss_cases()}
    assert names >= {"nll_loss", "binary_cross_entropy", "softmax_focal_loss"}
    assert {r["dtype"] for r in result["losses"]} == {"float32", "bfloat16"}
    for row in result["losses"]:
        assert row["jaxloss_s"] > 0 and row["copy_s"] > 0 and row["naive_s"] > 0
        assert abs(row["jaxloss_vs_copy"] - row["jaxloss_s"] / row["copy_s"]) < 1e-9
        fastest = min(row["naive_s"], row["library_s"] or row["naive_s"])
        assert row["jaxloss_vs_fastest"] == row["jaxloss_s"] / fastest
    with_library = {r["benchmark"] for r in result["losses"] if r["library_s"] is not None}
    assert with_library == {c.name for c in loss_suite.loss_cases() if c.library is not None}
    for row in result["linear"]:
        assert 0 < row["fused_temp_bytes"] and 0 < row["naive_temp_bytes"]
        assert 0 < row["one_pass_temp_bytes"]
        n, h, v = row["shape"]
        itemsize = 4 if row["dtype"] == "float32" else 2
        assert row["floor_bytes"] == (n * h + h * v) * itemsize
        assert row["temp_over_floor"] == row["fused_temp_bytes"] / row["floor_bytes"]
        assert row["time_ratio"] > 0 and row["vs_one_pass"] > 0
        assert "fused_rss_growth" not in row
    lm = {r["variant"]: r for r in result["lm"]}
    assert set(lm) == {
        "mean", "token_weight", "sequence_mean", "normalizer", "return_aux",
        "kl_dense", "kl_top64", "kl_unfused",
    }  # fmt: skip
    # Matmuls: three for cross-entropy whatever the options, four for a dense teacher.
    assert {lm[k]["matmuls"] for k in ("mean", "token_weight", "sequence_mean")} == {3}
    assert lm["kl_dense"]["matmuls"] == 4 and lm["kl_top64"]["matmuls"] == 3
    for row in lm.values():
        assert row["temp_vs_mean"] == row["temp_bytes"] / lm["mean"]["temp_bytes"]
        assert row["time_s"] > 0
    matmuls = {(r["program"], r["dtype"]): r for r in result["matmuls"]}
    programs = {"three matmuls", "linear_cross_entropy", "passes=1", "passes=2", "unfused"}
    assert set(matmuls) == {(p, d) for p in programs for d in ("float32", "bfloat16")}
    for (_, dtype), row in matmuls.items():
        assert row["vs_matmuls"] == row["time_s"] / matmuls["three matmuls", dtype]["time_s"]
        assert row["vs_unfused"] == row["time_s"] / matmuls["unfused", dtype]["time_s"]
    ctc = {r["variant"]: r for r in result["ctc"]}
    assert set(ctc) == {"ctc_loss_with_paddings", "ctc_loss (T, B, C)", "optax.ctc_loss"}
    for row in ctc.values():
        assert row["time_vs_optax"] == row["time_s"] / ctc["optax.ctc_loss"]["time_s"]
        assert row["temp_bytes"] > 0 and row["shape"] == list(ctc_suite.SMOKE_SHAPE)
    pairs = {r["loss"]: r for r in result["contrastive"]}
    assert set(pairs) == {"contrastive_loss", "sigmoid_contrastive_loss"}
    for row in pairs.values():
        assert row["time_vs_written_out"] == row["time_s"] / row["baseline_time_s"]
        assert 0 < row["temp_bytes"] and row["shape"] == [64, 8]
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "cross_entropy (index)" in proc.stdout
    assert "below 1 means jaxloss is faster" in proc.stdout
    assert " 0.000 s" not in proc.stdout and " 0.00 s" not in proc.stdout


@pytest.mark.exhaustive
def test_peak_rss_growth_is_sampled_while_a_call_runs():
    """A call that only writes arrays of the gradients' shapes grows the resident set by
    about their bytes, and the fused loss at the same shape by less than the unfused one."""
    n, h, v = 1024, 64, 16384
    gradient_bytes = (n * h + h * v) * 4
    floor = linear_suite.peak_rss_growth(n, h, v, "floor", "float32")
    fused = linear_suite.peak_rss_growth(n, h, v, "fused", "float32")
    naive = linear_suite.peak_rss_growth(n, h, v, "naive", "float32")
    assert floor is not None and fused is not None and naive is not None
    assert 0.9 * gradient_bytes <= floor <= 1.2 * gradient_bytes
    assert floor <= fused < naive


@pytest.mark.exhaustive
def test_published_figures_are_printed_beside_the_row_of_their_shape(monkeypatch, capsys):
    monkeypatch.setitem(linear_suite.PUBLISHED, (16, 8, 32, "float32"), "Somebody: 1 MB (a paper)")
    (row,) = linear_suite.run(((16, 8, 32),), ["float32"], 1, 0.0, measure_rss=False)
    assert row["published"] == "Somebody: 1 MB (a paper)"
    assert "published: Somebody: 1 MB (a paper)" in capsys.readouterr().out


def test_every_option_has_help_and_states_its_default(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "python -m benchmarks [losses|linear|lm|matmuls|memory|ctc|contrastive|all]" in text
    for option, default in [
        ("{all,losses,linear,lm,matmuls,memory,ctc,contrastive}", "(default: all)"),
        ("--contrastive-shape CONTRASTIVE_SHAPE", "(default: 16384x256)"),
        ("--matmul-shape MATMUL_SHAPE", "(default: 8192x512x32768)"),
        ("--memory-shape MEMORY_SHAPE", "(default: 8192x512x65536)"),
        ("--ctc-shape CTC_SHAPE", "(default: 32x500x1000x100)"),
        ("--lm-shapes LM_SHAPES", "(default: 8192x512x65536,2048x512x32768)"),
        ("--sizes SIZES", "(default: 4096x32768)"),
        (
            "--shapes SHAPES",
            "(default: 2048x512x32768,8192x512x65536,8192x2048x128256,8192x2304x256000,"
            "8192x4096x131072)",
        ),
        ("--dtypes DTYPES", "(default: float32,bfloat16)"),
        ("--repeats REPEATS", "(default: 7)"),
        ("--max-linear-tflop MAX_LINEAR_TFLOP", "(default: 2.0)"),
    ]:
        after = text.split(option, 2)[-1]
        # argparse wraps long defaults wherever it likes: compare without the spaces.
        assert default.replace(" ", "") in after.split(" --")[0].replace(" ", ""), (option, after)
    for flag in ("--no-rss", "--smoke", "--json JSON_PATH", "--plot PLOT_PATH", "--report JSON"):
        after = text.split(flag, 2)[-1].split(" --")[0]
        assert len(after.split()) >= 4, (flag, after)


def test_a_linear_shape_above_the_flop_limit_says_it_was_not_timed_and_why(capsys):
    (row,) = linear_suite.run(
        ((16, 8, 32),), ["float32"], 1, time_limit_flops=0.0, measure_rss=False
    )
    assert "fused_s" not in row
    assert row["not_timed"].startswith("6·N·H·V = 0.0 TFLOP per call is above --max-linear-tflop")
    assert "not timed: 6·N·H·V" in capsys.readouterr().out
    (row,) = linear_suite.run(
        ((16, 8, 32),), ["float32"], 1, time_limit_flops=1e12, measure_rss=False
    )
    assert row["time_ratio"] > 0 and "not_timed" not in row


@pytest.mark.exhaustive
@pytest.mark.parametrize("case", loss_suite.loss_cases(), ids=lambda case: case.name)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_every_baseline_computes_the_loss_and_gradient_jaxloss_computes(case, dtype):
    """A timing comparison is fair only between programs that give the same numbers: the
    naive formula and the library's version agree with jaxloss on the benchmark's own
    inputs, in value and gradient (the library's in float32, where it does not upcast)."""
    operands = loss_suite.loss_operands(8, 40, dtype)[case.operands]
    ours = loss_suite.value_and_gradient(case.jaxloss, case.operands)(*operands)
    baselines = [case.naive] + ([case.library] if case.library and dtype == "float32" else [])
    for baseline in baselines:
        theirs = loss_suite.value_and_gradient(baseline, case.operands)(*operands)
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_allclose(
                np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=2e-2, atol=1e-5
            )


@pytest.mark.exhaustive
def test_every_ctc_implementation_computes_the_same_loss_and_gradient():
    """The CTC rows time the same numbers: the benchmark's inputs have only possible
    alignments, where optax's finite log(0) changes nothing."""
    inputs = ctc_suite.ctc_inputs(*ctc_suite.SMOKE_SHAPE, "float32")
    results = {name: jax.value_and_grad(fn)(*inputs) for name, fn in ctc_suite.ctc_cases().items()}
    assert len(results) == 3
    want = results.pop("optax.ctc_loss")
    for got in results.values():
        for a, b in zip(got, want, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_the_matmul_floor_is_the_three_products_and_the_rows_compute_one_loss():
    """The ``matmuls`` rows compare programs that do the same work: the floor is three
    products (of the logits themselves: ``z @ w.T`` and ``x.T @ z``), and every loss row
    gives the unfused loss's value and gradients."""
    x = np.asarray(jax.random.normal(jax.random.key(0), (16, 8)), np.float32)
    w = np.asarray(jax.random.normal(jax.random.key(1), (8, 40)), np.float32) / 3
    y = np.arange(16) % 40
    assert measure.count_matmuls(matmul_suite.three_matmuls, x, w, y) == 3
    dx, dw = matmul_suite.three_matmuls(x, w, y)
    z = x.astype(np.float64) @ w
    np.testing.assert_allclose(dx, z @ w.T, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dw, x.T @ z, rtol=1e-4, atol=1e-4)
    steps = matmul_suite.programs()
    want = steps.pop("unfused")(x, w, y)
    steps.pop("three matmuls")
    for name, step in steps.items():
        for a, b in zip(jax.tree.leaves(step(x, w, y)), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.exhaustive
def test_the_memory_suite_accounts_for_the_resident_set():
    """Each row is measured in its own process: the floor program grows the resident set
    by about dX + dW; the fused loss by more, and by less with half its chunk size, whose
    compiled temporaries are smaller; the table shows every row."""
    n, h, v = 512, 64, 16384
    rows = {r["program"]: r for r in memory_suite.run((n, h, v), "float32")}
    half = memory_suite.auto_chunk_size(n, v) // 2
    assert list(rows) == [
        "floor program",
        "linear_cross_entropy",
        f"chunk_size={half}",
        "XLA's own dot (no YNNPACK)",
    ]
    gradients = (n * h + h * v) * 4
    assert all(r["gradient_bytes"] == gradients for r in rows.values())
    assert 0.9 * gradients <= rows["floor program"]["rss_growth"] <= 1.2 * gradients
    fused, halved = rows["linear_cross_entropy"], rows[f"chunk_size={half}"]
    assert halved["temp_bytes"] < fused["temp_bytes"]
    assert rows["floor program"]["rss_growth"] < halved["rss_growth"] < fused["rss_growth"]
    assert fused["above_gradients"] == fused["rss_growth"] - gradients
    assert rows["floor program"]["temp_bytes"] is None
    assert rows["XLA's own dot (no YNNPACK)"]["rss_growth"] > gradients
    assert memory_suite.table(list(rows.values())).count("\n| ") == 4
