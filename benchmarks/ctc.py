"""The ``ctc`` suite: ``ctc_loss_with_paddings`` and ``ctc_loss`` (PyTorch's time-major
layout) against ``optax.ctc_loss`` on the same batch-major logits (each takes the
log-softmax of unnormalized scores): interleaved median value-and-gradient times and
compiled temporary bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp

import jaxloss as jl
from benchmarks.measure import compiled_temp_bytes, format_seconds, interleaved_medians, mib

DEFAULT_SHAPE = (32, 500, 1000, 100)
SMOKE_SHAPE = (4, 24, 16, 6)


def ctc_inputs(batch: int, frames: int, classes: int, max_length: int, dtype) -> tuple:
    """Batch-major logits, their paddings (the last up to 20 % of the frames of each
    sequence), labels other than the blank 0, and label paddings (up to 20 % of them)."""
    keys = jax.random.split(jax.random.key(3), 4)
    logits = jax.random.normal(keys[0], (batch, frames, classes)).astype(dtype)
    lengths = jax.random.randint(keys[1], (batch,), (4 * frames) // 5, frames + 1)
    labels = jax.random.randint(keys[2], (batch, max_length), 1, classes)
    label_lengths = jax.random.randint(keys[3], (batch,), (4 * max_length) // 5, max_length + 1)
    logit_paddings = (jnp.arange(frames) >= lengths[:, None]).astype(dtype)
    label_paddings = (jnp.arange(max_length) >= label_lengths[:, None]).astype(dtype)
    return logits, logit_paddings, labels, label_paddings


def ctc_cases() -> dict[str, Callable]:
    """The mean CTC loss of ``(logits, logit_paddings, labels, label_paddings)`` by
    each implementation; optax's only where it is installed."""

    def time_major(z, zp, y, yp):
        lengths = jnp.sum(zp == 0, axis=1)
        log_probs = jl.log_softmax(z).transpose(1, 0, 2)
        return jl.ctc_loss(log_probs, y, lengths, jnp.sum(yp == 0, axis=1), reduction="sum")

    cases: dict[str, Callable] = {
        "ctc_loss_with_paddings": lambda *a: jnp.sum(jl.ctc_loss_with_paddings(*a)),
        "ctc_loss (T, B, C)": time_major,
    }
    try:
        import optax  # type: ignore[import-untyped]
    except ImportError:
        return cases
    cases["optax.ctc_loss"] = lambda *a: jnp.sum(optax.ctc_loss(*a))
    return cases


def run(shape: tuple[int, ...], dtype, repeats: int) -> list[dict]:
    batch, frames, classes, max_length = shape
    inputs = ctc_inputs(batch, frames, classes, max_length, dtype)
    steps = {name: jax.jit(jax.value_and_grad(fn)) for name, fn in ctc_cases().items()}
    times = interleaved_medians({k: partial(f, *inputs) for k, f in steps.items()}, repeats)
    base = times.get("optax.ctc_loss")
    rows = []
    for name, step in steps.items():
        row = {
            "benchmark": "ctc",
            "variant": name,
            "dtype": jnp.dtype(dtype).name,
            "shape": list(shape),
            "time_s": times[name],
            "time_vs_optax": None if base is None else times[name] / base,
            "temp_bytes": compiled_temp_bytes(step, *inputs),
        }
        rows.append(row)
        vs = "" if base is None else f" ({row['time_vs_optax']:.2f} of optax)"
        print(
            f"ctc {name:<24} {row['dtype']:>8} B×T×C×L {tuple(shape)}  time "
            f"{format_seconds(row['time_s'])}{vs}  temp {mib(row['temp_bytes'])}",
            flush=True,
        )
    return rows


def table(rows: list[dict]) -> str:
    """The ctc rows as the markdown table the docs quote."""
    first = rows[0]
    lines = [
        f"| implementation ({first['dtype']}, B × T × C × L = "
        f"{' × '.join(map(str, first['shape']))}) | value + gradient | / optax | temp bytes |",
        "|---|---|---|---|",
    ]
    for r in rows:
        vs = "–" if r["time_vs_optax"] is None else f"{r['time_vs_optax']:.2f}"
        lines.append(
            f"| {r['variant']} | {format_seconds(r['time_s'])} | {vs} | {mib(r['temp_bytes'])} |"
        )
    return "\n".join(lines)
