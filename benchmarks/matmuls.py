"""The ``matmuls`` suite: ``linear_cross_entropy``'s value and gradients (dX and dW)
against the three matmuls no implementation avoids (``x @ w``, ``g @ w.T``, ``x.T @
g``: 6 N H V flops) and against the unfused loss, interleaved in one process.

Rows: the three matmuls alone (``g`` is the logits themselves: no softmax, nothing but
the products), ``linear_cross_entropy`` by default, with ``passes=1`` and with
``passes=2``, and the unfused ``cross_entropy(x @ w, t)`` differentiated by autodiff.
Each time is divided by the three matmuls' and by the unfused loss's of the same run.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

import jaxloss as jl
from benchmarks.measure import format_seconds, interleaved_medians

DEFAULT_SHAPE = (8192, 512, 32768)
SMOKE_SHAPE = (64, 32, 512)


def three_matmuls(x, w, y):
    """The products of a linear head's value and gradients and nothing else."""
    del y
    acc = jnp.promote_types(x.dtype, jnp.float32)
    z = jnp.matmul(x, w, preferred_element_type=acc).astype(x.dtype)
    dx = jnp.matmul(z, w.T, preferred_element_type=acc).astype(x.dtype)
    dw = jnp.matmul(x.T, z, preferred_element_type=acc).astype(w.dtype)
    return dx, dw


def programs() -> dict:
    """The jitted programs of the rows, each of ``(x, w, y)``."""

    def unfused(x, w, y):
        return jl.cross_entropy(jnp.matmul(x, w, preferred_element_type=jnp.float32), y)

    def fused(**options):
        return lambda x, w, y: jl.linear_cross_entropy(x, w, y, **options)

    losses = {
        "linear_cross_entropy": fused(),
        "passes=1": fused(passes=1),
        "passes=2": fused(passes=2),
        "unfused": unfused,
    }
    steps = {"three matmuls": jax.jit(three_matmuls)}
    steps.update({k: jax.jit(jax.value_and_grad(f, argnums=(0, 1))) for k, f in losses.items()})
    return steps


def run(shape: tuple[int, ...], dtypes, repeats: int) -> list[dict]:
    n, h, v = shape
    rows = []
    for dtype in dtypes:
        keys = jax.random.split(jax.random.key(4), 3)
        x = jax.random.normal(keys[0], (n, h), jnp.float32).astype(dtype)
        w = (jax.random.normal(keys[1], (h, v), jnp.float32) / h**0.5).astype(dtype)
        y = jax.random.randint(keys[2], (n,), 0, v)
        steps = programs()
        times = interleaved_medians({k: partial(f, x, w, y) for k, f in steps.items()}, repeats)
        for name, seconds in times.items():
            row = {
                "benchmark": "matmuls",
                "program": name,
                "shape": [n, h, v],
                "dtype": jnp.dtype(dtype).name,
                "repeats": repeats,
                "time_s": seconds,
                "vs_matmuls": seconds / times["three matmuls"],
                "vs_unfused": seconds / times["unfused"],
            }
            rows.append(row)
            print(
                f"matmuls {name:<22} {tuple(shape)} {row['dtype']:>8}  "
                f"{format_seconds(seconds)}  × three matmuls {row['vs_matmuls']:.2f}  "
                f"× unfused {row['vs_unfused']:.2f}",
                flush=True,
            )
    return rows


def table(rows: list[dict]) -> str:
    """The matmuls rows as the markdown table the docs quote, one per dtype."""
    first = rows[0]
    lines = [
        f"| program ({' × '.join(map(str, first['shape']))}, value + dX + dW, "
        f"{first['repeats']} interleaved repeats) | dtype | time | × three matmuls "
        "| × unfused |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['program']} | {r['dtype']} | {format_seconds(r['time_s'])} "
            f"| {r['vs_matmuls']:.2f} | {r['vs_unfused']:.2f} |"
        )
    return "\n".join(lines)
