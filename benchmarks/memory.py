"""The ``memory`` suite: where the resident memory of ``linear_cross_entropy``'s value
and gradients goes, on CPU, at one shape and dtype.

Rows, each the peak growth of the resident set during one call in a fresh process
(``linear.peak_rss_growth``) and, for the loss, XLA's compiled temporary bytes: the
floor program (it only writes arrays of the gradients' shapes: dX + dW and the
runtime's own cost of returning them); ``linear_cross_entropy`` by default; with half
the default ``chunk_size``; and by default with XLA's CPU backend multiplying by itself
instead of through its YNNPACK fusions (``--xla_cpu_experimental_ynn_fusion_type=``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from benchmarks.linear import peak_rss_growth
from benchmarks.measure import compiled_temp_bytes, mib
from jaxloss._fused.engine import auto_chunk_size

DEFAULT_SHAPE = (8192, 512, 65536)
SMOKE_SHAPE = (256, 32, 2048)
XLA_OWN_DOT = "--xla_cpu_experimental_ynn_fusion_type="


def _temp_bytes(n: int, h: int, v: int, dtype, chunk_size: int | None) -> int:
    import jaxloss as jl

    def loss(x, w, y):
        return jl.linear_cross_entropy(x, w, y, chunk_size=chunk_size)

    shapes = (
        jax.ShapeDtypeStruct((n, h), dtype),
        jax.ShapeDtypeStruct((h, v), dtype),
        jax.ShapeDtypeStruct((n,), jnp.int32),
    )
    return compiled_temp_bytes(jax.value_and_grad(loss, argnums=(0, 1)), *shapes)


def run(shape: tuple[int, ...], dtype) -> list[dict]:
    """One row per program; ``above_gradients`` is the growth less dX + dW's bytes."""
    n, h, v = shape
    dtype = jnp.dtype(dtype)
    gradients = (n * h + h * v) * dtype.itemsize
    half = max(1, auto_chunk_size(n, v) // 2)
    programs = {  # variant, chunk_size, XLA flags
        "floor program": ("floor", None, ""),
        "linear_cross_entropy": ("fused", None, ""),
        f"chunk_size={half}": ("fused", half, ""),
        "XLA's own dot (no YNNPACK)": ("fused", None, XLA_OWN_DOT),
    }
    rows = []
    for name, (variant, chunk, flags) in programs.items():
        growth = peak_rss_growth(n, h, v, variant, dtype, chunk, flags)
        # This process's flags are fixed: the last row's temporaries are not compiled here.
        compiled_here = variant == "fused" and not flags
        temps = _temp_bytes(n, h, v, dtype, chunk) if compiled_here else None
        row = {
            "benchmark": "memory",
            "program": name,
            "shape": [n, h, v],
            "dtype": dtype.name,
            "gradient_bytes": gradients,
            "rss_growth": growth,
            "above_gradients": None if growth is None else growth - gradients,
            "temp_bytes": temps,
        }
        rows.append(row)
        print(f"memory {name:<28} {tuple(shape)} {dtype.name:>8}  {_cells(row)}", flush=True)
    return rows


def _cells(row: dict) -> str:
    shown = [row["rss_growth"], row["above_gradients"], row["temp_bytes"]]
    return " | ".join("—" if b is None else mib(b) for b in shown)


def table(rows: list[dict]) -> str:
    """The memory rows as the markdown table the docs quote."""
    first = rows[0]
    shape = " × ".join(map(str, first["shape"]))
    lines = [
        f"| program ({shape}, {first['dtype']}; dX + dW = {mib(first['gradient_bytes'])}) "
        "| peak RSS growth | above dX + dW | compiled temporaries |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['program']} | {_cells(r)} |" for r in rows]
    return "\n".join(lines)
