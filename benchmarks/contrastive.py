"""The ``contrastive`` suite: ``contrastive_loss`` and ``sigmoid_contrastive_loss``
against the programs users write over the ``B x B`` logits (optax's cross-entropy of
``s * x @ y.T + b`` and of its transpose; the written-out sigmoid loss): interleaved
median times of the value and the gradients of ``x``, ``y``, the scale and the bias,
and compiled temporary bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp

import jaxloss as jl
from benchmarks.measure import compiled_temp_bytes, format_seconds, interleaved_medians, mib

DEFAULT_SHAPE = (16384, 256)
SMOKE_SHAPE = (64, 8)


def written_out_clip(x, y, s, b):
    z = jnp.dot(x, y.T, preferred_element_type=jnp.float32) * s + b
    pairs = jnp.arange(x.shape[0])
    rows = jl.cross_entropy(z, pairs, reduction="none")
    return jnp.mean(rows + jl.cross_entropy(z.T, pairs, reduction="none")) / 2


def written_out_sigmoid(x, y, s, b):
    z = jnp.dot(x, y.T, preferred_element_type=jnp.float32) * s + b
    signs = 2 * jnp.eye(x.shape[0]) - 1
    return -jnp.sum(jax.nn.log_sigmoid(signs * z)) / x.shape[0]


def cases() -> dict[str, tuple[Callable, Callable]]:
    """Each loss of ``(x, y, scale, bias)``: jaxloss's and the written-out baseline."""
    try:  # optax's cross-entropy where it is installed, as users write it
        import optax  # type: ignore[import-untyped]

        def clip_baseline(x, y, s, b):
            z = jnp.dot(x, y.T, preferred_element_type=jnp.float32) * s + b
            pairs = jnp.arange(x.shape[0])
            ce = optax.softmax_cross_entropy_with_integer_labels
            return jnp.mean(ce(z, pairs) + ce(z.T, pairs)) / 2
    except ImportError:
        clip_baseline = written_out_clip

    def clip(x, y, s, b):
        return jl.contrastive_loss(x, y, logit_scale=s, logit_bias=b)

    def sigmoid(x, y, s, b):
        return jl.sigmoid_contrastive_loss(x, y, logit_scale=s, logit_bias=b)

    return {
        "contrastive_loss": (clip, clip_baseline),
        "sigmoid_contrastive_loss": (sigmoid, written_out_sigmoid),
    }


def run(shape: tuple[int, ...], dtype, repeats: int) -> list[dict]:
    batch, dim = shape
    keys = jax.random.split(jax.random.key(5), 2)
    x, y = (jax.random.normal(k, (batch, dim)).astype(dtype) / dim**0.5 for k in keys)
    inputs = (x, y, jnp.float32(10.0), jnp.float32(-1.0))
    steps = {}
    for name, (ours, baseline) in cases().items():
        for variant, fn in ((name, ours), (f"{name} written out", baseline)):
            steps[variant] = jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2, 3)))
    times = interleaved_medians({k: partial(f, *inputs) for k, f in steps.items()}, repeats)
    rows = []
    for name in cases():
        base = f"{name} written out"
        row = {
            "benchmark": "contrastive", "loss": name, "dtype": jnp.dtype(dtype).name,
            "shape": list(shape), "time_s": times[name], "baseline_time_s": times[base],
            "time_vs_written_out": times[name] / times[base],
            "temp_bytes": compiled_temp_bytes(steps[name], *inputs),
            "baseline_temp_bytes": compiled_temp_bytes(steps[base], *inputs),
        }  # fmt: skip
        rows.append(row)
        print(
            f"contrastive {name:<26} {row['dtype']:>8} B×D {tuple(shape)}  time "
            f"{format_seconds(row['time_s'])} ({row['time_vs_written_out']:.2f} of written "
            f"out)  temp {mib(row['temp_bytes'])} (written out {mib(row['baseline_temp_bytes'])})",
            flush=True,
        )
    return rows


def table(rows: list[dict]) -> str:
    """The contrastive rows as the markdown table the docs quote."""
    first = rows[0]
    lines = [
        f"| loss ({first['dtype']}, B × D = {' × '.join(map(str, first['shape']))}) "
        "| value + gradients | written out | ratio | temp bytes | written out |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| `{r['loss']}` | {format_seconds(r['time_s'])} "
            f"| {format_seconds(r['baseline_time_s'])} | {r['time_vs_written_out']:.2f} "
            f"| {mib(r['temp_bytes'])} | {mib(r['baseline_temp_bytes'])} |"
        )
    return "\n".join(lines)
