"""The ``lm`` suite: the options of a language model's training loss at one shape, each
against ``linear_cross_entropy``'s plain mean measured in the same run: token weights,
packed sequences (``segment_ids`` with ``"sequence_mean"``), a traced ``normalizer``,
``return_aux``, and distillation with ``linear_kl_div`` (a dense teacher of the
student's size, and a top-64 teacher) beside the unfused KL divergence of the two
heads' softmaxes: the matmuls in the program, compiled temporary bytes (at the memory
shape) and interleaved median times (at the time shape).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

import jaxloss as jl
from benchmarks.measure import (
    compiled_temp_bytes,
    count_matmuls,
    format_seconds,
    interleaved_medians,
    mib,
)

DEFAULT_MEMORY_SHAPE = (8192, 512, 65536)
DEFAULT_TIME_SHAPE = (2048, 512, 32768)
SMOKE_SHAPE = (64, 32, 512)

TOP_K = 64


def lm_cases(n: int, v: int):
    """The variants of the ``lm`` benchmark: name -> loss of ``(x, w, y, tx, tw)``, with
    ``x`` of shape ``(8, n // 8, H)`` (8 rows of packed sequences)."""
    rows = 8
    tokens = n // rows
    # Packed rows: sequences of 1/8 to 1/2 of a row, a padded tail.
    bounds = jnp.array([tokens // 8, tokens // 4, tokens // 2, tokens - tokens // 16])
    segments = jnp.searchsorted(bounds, jnp.arange(tokens), side="right") + 1
    segments = jnp.broadcast_to(jnp.where(segments > 4, 0, segments), (rows, tokens))
    token_weight = jnp.linspace(0.5, 1.5, n).reshape(rows, tokens)

    # A top-64 teacher: fixed ids and log-probabilities (their values do not change the cost).
    ids = jnp.broadcast_to((jnp.arange(TOP_K) * 7919) % v, (rows, tokens, TOP_K))
    log_probs = jnp.broadcast_to(jax.nn.log_softmax(-jnp.arange(TOP_K) / 8.0), ids.shape)

    def unfused_kl(x, w, y, tx, tw):
        student = jl.log_softmax(jnp.matmul(x, w, preferred_element_type=jnp.float32) / 2.0)
        teacher = jl.softmax(jnp.matmul(tx, tw, preferred_element_type=jnp.float32) / 2.0)
        return 4.0 * jl.kl_div(student, teacher, reduction="sum") / n

    return {
        "mean": lambda x, w, y, tx, tw: jl.linear_cross_entropy(x, w, y),
        "token_weight": lambda x, w, y, tx, tw: jl.linear_cross_entropy(
            x, w, y, token_weight=token_weight
        ),
        "sequence_mean": lambda x, w, y, tx, tw: jl.linear_cross_entropy(
            x, w, y, segment_ids=segments, reduction="sequence_mean"
        ),
        "normalizer": lambda x, w, y, tx, tw: jl.linear_cross_entropy(
            x, w, y, normalizer=jnp.sum(y >= 0) * 4.0
        ),
        "return_aux": lambda x, w, y, tx, tw: jl.linear_cross_entropy(x, w, y, return_aux=True)[0],
        "kl_dense": lambda x, w, y, tx, tw: jl.linear_kl_div(x, w, tx, tw, temperature=2.0),
        "kl_top64": lambda x, w, y, tx, tw: jl.linear_kl_div(
            x, w, teacher_topk=(ids, log_probs), temperature=2.0
        ),
        "kl_unfused": unfused_kl,
    }


def _lm_inputs(n: int, h: int, v: int, dtype, abstract: bool):
    shapes = [((8, n // 8, h), dtype), ((h, v), dtype), ((8, n // 8), jnp.int32)]
    shapes += [((8, n // 8, h), dtype), ((h, v), dtype)]
    if abstract:
        return [jax.ShapeDtypeStruct(s, d) for s, d in shapes]
    keys = jax.random.split(jax.random.key(2), 5)
    x = jax.random.normal(keys[0], shapes[0][0]).astype(dtype)
    w = (jax.random.normal(keys[1], (h, v)) / h**0.5).astype(dtype)
    y = jax.random.randint(keys[2], shapes[2][0], 0, v)
    tx = jax.random.normal(keys[3], shapes[0][0]).astype(dtype)
    tw = (jax.random.normal(keys[4], (h, v)) / h**0.5).astype(dtype)
    return [x, w, y, tx, tw]


def run(memory_shape, time_shape, dtype, repeats: int) -> list[dict]:
    rows = []
    n, h, v = memory_shape
    steps = {name: jax.value_and_grad(fn, argnums=(0, 1)) for name, fn in lm_cases(n, v).items()}
    abstract = _lm_inputs(n, h, v, dtype, abstract=True)
    floor = (n * h + h * v) * jnp.dtype(dtype).itemsize
    for name, step in steps.items():
        rows.append(
            {
                "benchmark": "lm",
                "variant": name,
                "dtype": jnp.dtype(dtype).name,
                "memory_shape": [n, h, v],
                "matmuls": count_matmuls(step, *abstract),
                "temp_bytes": compiled_temp_bytes(step, *abstract),
                "floor_bytes": floor,
            }
        )
    base = next(r for r in rows if r["variant"] == "mean")
    unfused = next(r for r in rows if r["variant"] == "kl_unfused")
    for r in rows:
        r["temp_vs_mean"] = r["temp_bytes"] / base["temp_bytes"]
        r["temp_vs_unfused_kl"] = r["temp_bytes"] / unfused["temp_bytes"]
    tn, th, tv = time_shape
    values = _lm_inputs(tn, th, tv, dtype, abstract=False)
    timed = {
        name: partial(jax.jit(jax.value_and_grad(fn, argnums=(0, 1))), *values)
        for name, fn in lm_cases(tn, tv).items()
    }
    times = interleaved_medians(timed, repeats)
    for r in rows:
        r["time_shape"] = [tn, th, tv]
        r["time_s"] = times[r["variant"]]
        r["time_vs_mean"] = times[r["variant"]] / times["mean"]
        print(
            f"lm {r['variant']:<14} {r['dtype']:>8} matmuls {r['matmuls']}  temp "
            f"{mib(r['temp_bytes'])} at {tuple(r['memory_shape'])} ({r['temp_vs_mean']:.2f} "
            f"of mean, {r['temp_vs_unfused_kl']:.4f} of unfused KL)  time "
            f"{format_seconds(r['time_s'])} at {tuple(r['time_shape'])} "
            f"({r['time_vs_mean']:.2f} of mean)",
            flush=True,
        )
    return rows


def table(rows: list[dict]) -> str:
    """The lm rows as the markdown table the docs quote."""
    first = rows[0]
    memory = " × ".join(map(str, first["memory_shape"]))
    timing = " × ".join(map(str, first["time_shape"]))
    lines = [
        f"| variant ({first['dtype']}) | matmuls | temp bytes at {memory} | / mean "
        f"| / unfused KL | time at {timing} | / mean |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['matmuls']} | {mib(r['temp_bytes'])} "
            f"| {r['temp_vs_mean']:.2f} | {r['temp_vs_unfused_kl']:.4f} "
            f"| {format_seconds(r['time_s'])} | {r['time_vs_mean']:.2f} |"
        )
    return "\n".join(lines)
