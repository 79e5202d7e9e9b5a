"""The ``linear`` suite: ``linear_cross_entropy`` (its default, and ``passes=1``) against
the unfused ``cross_entropy(x @ w, t)``: XLA's compiled temporary bytes (deterministic)
beside the floor, the bytes of the gradients dx and dw that every implementation
returns; interleaved median times of value-and-gradient; on CPU the peak growth of the
resident set during one call (``benchmarks/rss_probe.py``); and, at the shapes they
publish, the GPU kernels' own figures (quoted, not measured here).
"""

from __future__ import annotations

import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp

import jaxloss as jl
from benchmarks.measure import compiled_temp_bytes, format_seconds, interleaved_medians, mib
from benchmarks.rss_probe import VARIANTS as RSS_VARIANTS

DEFAULT_SHAPES = (
    (2048, 512, 32768),
    (8192, 512, 65536),
    (8192, 2048, 128256),
    (8192, 2304, 256000),  # a Gemma-2-2B head
    (8192, 4096, 131072),  # a Llama-3-8B-sized head
)
SMOKE_SHAPES = ((64, 32, 512),)
PROBE = Path(__file__).with_name("rss_probe.py")


def peak_rss_growth(
    n: int, h: int, v: int, variant: str, dtype, chunk_size: int | None = None, xla_flags: str = ""
) -> int | None:
    """Bytes by which one value-and-gradient call grows the resident set of a fresh
    process, sampled from a thread while it runs (inputs made, program compiled and
    called once first). ``variant`` is one of ``RSS_VARIANTS``: ``"floor"`` is a program
    that only writes arrays of the gradients' shapes, the least any call can add.
    ``chunk_size`` is the fused variants'; ``xla_flags`` are added to the process's."""
    # A fixed mmap threshold: every large buffer is mapped when allocated and unmapped
    # when freed. (glibc raises its threshold after such frees, so the set-up call's
    # buffers could otherwise be reused from the heap, unseen by the resident set.)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(2**16))
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {xla_flags}".strip()
    chunk = [] if chunk_size is None else [str(chunk_size)]
    proc = subprocess.run(
        [sys.executable, str(PROBE), str(n), str(h), str(v), variant, jnp.dtype(dtype).name]
        + chunk,
        capture_output=True,
        text=True,
        timeout=1800,
        env=env,
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        return None
    return int(proc.stdout.strip().splitlines()[-1])


# Published loss-and-gradient memory of the GPU kernels, quoted beside our rows of the same
# shape, or the nearest one (their figures, their shapes; not measured here).
PUBLISHED = {
    (8192, 2304, 256000, "bfloat16"): (
        "Cut Cross-Entropy: 1164 MB (MiB by its size: dx and dw alone are 1161 MiB) for"
        " loss + gradients on an A100, gradients accumulated in bfloat16; README of"
        " github.com/apple/ml-cross-entropy, Wijmans et al. 2024, arXiv:2411.09009"
    ),
    (8192, 4096, 131072, "bfloat16"): (
        "Liger-Kernel: 4408 MB peak GPU memory for a forward and backward step at"
        " 8192 x 4096 x 128256 bfloat16 on an H100, parameters included;"
        " benchmark/fused_linear_cross_entropy_memory in github.com/linkedin/Liger-Kernel"
    ),
}


def _steps() -> dict:
    def fused(x, w, y):
        return jl.linear_cross_entropy(x, w, y)

    def one_pass(x, w, y):
        return jl.linear_cross_entropy(x, w, y, passes=1)

    def naive(x, w, y):
        return jl.cross_entropy(jnp.matmul(x, w, preferred_element_type=jnp.float32), y)

    return {
        name: jax.value_and_grad(fn, argnums=(0, 1))
        for name, fn in (("fused", fused), ("one_pass", one_pass), ("naive", naive))
    }


def _memory_row(n: int, h: int, v: int, dtype, steps: dict) -> dict:
    """Compiled temporary bytes of each step (nothing runs) beside the gradients' bytes."""
    x = jax.ShapeDtypeStruct((n, h), dtype)
    w = jax.ShapeDtypeStruct((h, v), dtype)
    y = jax.ShapeDtypeStruct((n,), jnp.int32)
    name = jnp.dtype(dtype).name
    row = {
        "benchmark": "linear_cross_entropy",
        "shape": [n, h, v],
        "dtype": name,
        **{f"{k}_temp_bytes": compiled_temp_bytes(f, x, w, y) for k, f in steps.items()},
        "logits_bytes": n * v * 4,
        # dx and dw, the gradients returned: the least any implementation holds.
        "floor_bytes": (n * h + h * v) * jnp.dtype(dtype).itemsize,
    }
    row["temp_ratio"] = row["fused_temp_bytes"] / row["naive_temp_bytes"]
    row["temp_over_floor"] = row["fused_temp_bytes"] / row["floor_bytes"]
    if (n, h, v, name) in PUBLISHED:
        row["published"] = PUBLISHED[(n, h, v, name)]
    return row


def _times(n: int, h: int, v: int, dtype, steps: dict, repeats: int) -> dict:
    keys = jax.random.split(jax.random.key(1), 3)
    x = jax.random.normal(keys[0], (n, h), jnp.float32).astype(dtype)
    w = (jax.random.normal(keys[1], (h, v), jnp.float32) / h**0.5).astype(dtype)
    y = jax.random.randint(keys[2], (n,), 0, v)
    times = interleaved_medians(
        {k: partial(jax.jit(f), x, w, y) for k, f in steps.items()}, repeats
    )
    return {
        "fused_s": times["fused"],
        "one_pass_s": times["one_pass"],
        "naive_s": times["naive"],
        "time_ratio": times["fused"] / times["naive"],
        "vs_one_pass": times["fused"] / times["one_pass"],
        "fused_TFLOPs": 6 * n * h * v / times["fused"] / 1e12,
    }


def run(shapes, dtypes, repeats: int, time_limit_flops: float, measure_rss: bool = True) -> list:
    """One row per shape and dtype: memory always; time (and on CPU the resident set)
    where ``6 N H V`` is at most ``time_limit_flops``."""
    rows = []
    for n, h, v in shapes:
        for dtype in dtypes:
            steps = _steps()
            row = _memory_row(n, h, v, dtype, steps)
            flops = 6 * n * h * v
            if flops > time_limit_flops:
                row["not_timed"] = (
                    f"6·N·H·V = {flops / 1e12:.1f} TFLOP per call is above "
                    f"--max-linear-tflop {time_limit_flops / 1e12:g}"
                )
            else:
                row.update(_times(n, h, v, dtype, steps, repeats))
                if jax.default_backend() == "cpu" and measure_rss:
                    for variant in RSS_VARIANTS:
                        growth = peak_rss_growth(n, h, v, variant, dtype)
                        row[f"{variant.replace('-', '_')}_rss_growth"] = growth
            rows.append(row)
            _print_row(row)
    return rows


def _print_row(row) -> None:
    mib = 2**20
    print(
        f"linear_cross_entropy {str(tuple(row['shape'])):>22} {row['dtype']:>8}  temp bytes: "
        f"fused {row['fused_temp_bytes'] / mib:.1f} MiB  one pass "
        f"{row['one_pass_temp_bytes'] / mib:.1f} MiB  naive {row['naive_temp_bytes'] / mib:.1f} MiB"
        f"  fused/naive {row['temp_ratio']:.4f}  floor (dx + dw) {row['floor_bytes'] / mib:.1f} MiB"
        f"  fused temp/floor {row['temp_over_floor']:.3f}",
        flush=True,
    )
    if "fused_s" in row:
        print(
            f"    time fused {format_seconds(row['fused_s'])}  one pass "
            f"{format_seconds(row['one_pass_s'])}  naive {format_seconds(row['naive_s'])}  "
            f"fused/one pass {row['vs_one_pass']:.2f}  fused/naive {row['time_ratio']:.2f}",
            flush=True,
        )
    else:
        print(f"    not timed: {row['not_timed']}", flush=True)
    if row.get("fused_rss_growth"):
        growths = "  ".join(
            f"{v} {row[v.replace('-', '_') + '_rss_growth'] / mib:.0f} MiB"
            for v in RSS_VARIANTS
            if row.get(v.replace("-", "_") + "_rss_growth")
        )
        print(
            f"    peak RSS growth: {growths}  fused/floor "
            f"{row['fused_rss_growth'] / row['floor_bytes']:.2f}",
            flush=True,
        )
    if "published" in row:
        total = (row["floor_bytes"] + row["fused_temp_bytes"]) / mib
        print(
            f"    jaxloss: {total:.0f} MiB (gradients + compiled temporaries); "
            f"published: {row['published']}",
            flush=True,
        )


def table(rows: list[dict]) -> str:
    """The linear_cross_entropy rows as the markdown tables the docs quote: memory, then
    time and resident set where measured."""
    lines = [
        "| N × H × V | dtype | floor: dx + dw | temp bytes: fused | one pass | naive "
        "| fused temp / floor | fused / naive (< 1: smaller) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {' × '.join(map(str, r['shape']))} | {r['dtype']} | {mib(r['floor_bytes'])} "
            f"| {mib(r['fused_temp_bytes'])} | {mib(r['one_pass_temp_bytes'])} "
            f"| {mib(r['naive_temp_bytes'])} | {r['temp_over_floor']:.3f} "
            f"| {r['temp_ratio']:.3f} |"
        )
    timed = [r for r in rows if "fused_s" in r]
    if timed:
        lines += [
            "",
            "| N × H × V | dtype | time: fused | one pass | naive | fused / one pass "
            "| fused / naive (< 1: faster) | peak RSS growth: fused | one pass | naive "
            "| floor program | fused / (dx + dw) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in timed:
            rss = [r.get(f"{v.replace('-', '_')}_rss_growth") for v in RSS_VARIANTS]
            shown = " | ".join(f"{g / 2**20:.0f} MiB" if g else "—" for g in rss)
            ratio = f"{rss[0] / r['floor_bytes']:.2f}" if rss[0] else "—"
            lines.append(
                f"| {' × '.join(map(str, r['shape']))} | {r['dtype']} "
                f"| {format_seconds(r['fused_s'])} | {format_seconds(r['one_pass_s'])} "
                f"| {format_seconds(r['naive_s'])} | {r['vs_one_pass']:.2f} "
                f"| {r['time_ratio']:.2f} | {shown} | {ratio} |"
            )
    return "\n".join(lines)
