"""The communication of the fused losses on 8 host CPU devices, from compiled programs.

Executed by tests/test_sharding.py in a subprocess (the device count is fixed when JAX
starts); compiles only. For every layout, mode, dtype and fused loss it prints one JSON
line with the collective elements of ``jit(value_and_grad(loss, argnums=(0, 1)))``,
loops weighted by their trip counts, next to the same count for the unfused loss in
the same layout and mode.
"""

import json
import os
import pathlib
import sys

if __name__ == "__main__":  # not when pytest's doctest collector imports this file
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    )
    os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import jaxloss as jl  # noqa: E402
from benchmarks.measure import collective_elements, environment  # noqa: E402
from tests.sharded_cases import MODES, fused_layouts  # noqa: E402


def unfused(x, w, y, t):
    return jl.cross_entropy(jnp.dot(x, w, preferred_element_type=jnp.float32), y)


def unfused_kl(x, w, y, t):
    student = jl.log_softmax(jnp.dot(x, w, preferred_element_type=jnp.float32))
    teacher = jl.softmax(jnp.dot(x, t, preferred_element_type=jnp.float32))
    return jl.kl_div(student, teacher, reduction="batchmean")


def unfused_none(x, w, y, t):
    per_token = jl.cross_entropy(
        jnp.dot(x, w, preferred_element_type=jnp.float32), y, reduction="none"
    )
    return jnp.sum(jnp.cos(y.astype(jnp.float32)) * per_token)


def unfused_jsd(x, w, y, t):
    log_q = jl.log_softmax(jnp.dot(x, w, preferred_element_type=jnp.float32))
    log_p = jl.log_softmax(jnp.dot(x, t, preferred_element_type=jnp.float32))
    log_m = jnp.logaddexp(jnp.log(0.3) + log_p, jnp.log(0.7) + log_q)
    kl_pm = jnp.sum(jnp.exp(log_p) * (log_p - log_m), axis=-1)
    kl_qm = jnp.sum(jnp.exp(log_q) * (log_q - log_m), axis=-1)
    return jnp.mean(0.3 * kl_pm + 0.7 * kl_qm)


def _policy_objective(log_probs, entropy, y):
    """A policy-gradient objective: cotangents on both per-token outputs."""
    return jnp.sum(jnp.cos(y.astype(jnp.float32)) * log_probs) + 0.1 * jnp.sum(entropy)


def unfused_log_probs(x, w, y, t):
    log_p = jl.log_softmax(jnp.dot(x, w, preferred_element_type=jnp.float32))
    target = jnp.sum(jnp.where(y[:, None] == jnp.arange(w.shape[1]), log_p, 0.0), axis=-1)
    return _policy_objective(target, -jnp.sum(jnp.exp(log_p) * log_p, axis=-1), y)


def fused_log_probs(chunk):
    def objective(x, w, y, t):
        log_probs, entropy = jl.linear_log_probs(x, w, y, chunk_size=chunk)
        return _policy_objective(log_probs.astype(jnp.float32), entropy, y)

    return objective


def replicated(w, mesh, mode_name):
    """``w`` replicated over ``mesh``: what a user does where the tokens and ``w``'s
    vocabulary share a mesh axis, as the unfused ``x @ w`` does itself."""
    if MODES[mode_name][0] == jax.sharding.AxisType.Explicit:
        return jax.sharding.reshard(w, P())
    return jax.lax.with_sharding_constraint(w, NamedSharding(mesh, P()))


def losses(chunk, layout, mesh, mode_name):
    """Each fused loss with the unfused loss it is compared with."""
    same_axis = {
        "linear_cross_entropy_w_replicated": (
            lambda x, w, y, t: jl.linear_cross_entropy(
                x, replicated(w, mesh, mode_name), y, chunk_size=chunk, label_smoothing=0.1
            ),
            unfused,
        ),
    }
    return (same_axis if layout == "vocab_on_data" else {}) | {
        "linear_cross_entropy": (
            lambda x, w, y, t: jl.linear_cross_entropy(
                x, w, y, chunk_size=chunk, label_smoothing=0.1
            ),
            unfused,
        ),
        "linear_cross_entropy_two_pass": (
            lambda x, w, y, t: jl.linear_cross_entropy(x, w, y, chunk_size=chunk, passes=2),
            unfused,
        ),
        "linear_cross_entropy_one_pass": (
            lambda x, w, y, t: jl.linear_cross_entropy(x, w, y, chunk_size=chunk, passes=1),
            unfused,
        ),
        "linear_cross_entropy_none": (
            lambda x, w, y, t: jnp.sum(
                jnp.cos(y.astype(jnp.float32))
                * jl.linear_cross_entropy(x, w, y, chunk_size=chunk, reduction="none")
            ),
            unfused_none,
        ),
        "linear_kl_div": (
            lambda x, w, y, t: jl.linear_kl_div(x, w, x, t, chunk_size=chunk),
            unfused_kl,
        ),
        "linear_kl_div_topk": (
            lambda x, w, y, t: jl.linear_kl_div(
                x,
                w,
                teacher_topk=(jnp.stack([y, y + 1], -1) % w.shape[1], jnp.zeros(y.shape + (2,))),
                chunk_size=chunk,
            ),
            unfused,
        ),
        "linear_jsd": (
            lambda x, w, y, t: jl.linear_jsd(x, w, x, t, beta=0.3, chunk_size=chunk),
            unfused_jsd,
        ),
        "linear_log_probs": (fused_log_probs(chunk), unfused_log_probs),
    }


def count(fn, mesh, mode_name, args):
    step = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))
    try:
        if MODES[mode_name][1]:
            with jax.set_mesh(mesh):
                compiled = step.lower(*args).compile()
        else:
            compiled = step.lower(*args).compile()
    except Exception as error:  # the explicit-mode layout with no baseline (and no fused)
        return f"{type(error).__name__}: {error}"
    return sum(collective_elements(compiled.as_text()).values())


def export_sharded(mesh, x_spec, w_spec):
    """``jax.export`` of value and gradients with the FSDP layout and no mesh set: the
    identity that gathers w is exported as it is (its partitioning rule is a callback)."""

    def shape(dims, dtype, spec):
        return jax.ShapeDtypeStruct(dims, dtype, sharding=NamedSharding(mesh, spec))

    args = (
        shape((2048, 64), jnp.float32, x_spec),
        shape((64, 4096), jnp.float32, w_spec),
        shape((2048,), jnp.int32, P(x_spec[0])),
    )
    step = jax.value_and_grad(lambda x, w, y: jl.linear_cross_entropy(x, w, y), argnums=(0, 1))
    exported = jax.export.export(jax.jit(step), platforms=["cpu", "cuda", "tpu"])(*args)
    with jax.set_mesh(mesh):
        under_mesh = jax.export.export(jax.jit(step), platforms=["cpu", "cuda", "tpu"])(*args)

    def elements(fn):
        return sum(collective_elements(jax.jit(fn).lower(*args).compile().as_text()).values())

    line = {
        "exported_platforms": list(exported.platforms),
        "jitted": elements(step),
        "exported": elements(exported.call),
        "exported_under_mesh": elements(under_mesh.call),
    }
    print(json.dumps(line), flush=True)


def same_axis_minimal(tokens_per_device=1024, hidden=64, vocab=2048, chunk=128):
    """The smallest program of the same-axis layout (tokens and ``w``'s vocabulary both
    over the 8 devices, no mesh set): one ``x @ w`` against the same product in a loop
    over token chunks, each chunk a block of every device's rows as the fused losses
    lay them out. Prints the all-gathered elements of each (loops weighted)."""
    mesh, x_spec, w_spec, _ = fused_layouts(MODES["auto"][0])["vocab_on_data"]
    n = 8 * tokens_per_device
    x = jax.ShapeDtypeStruct((n, hidden), jnp.float32, sharding=NamedSharding(mesh, x_spec))
    w = jax.ShapeDtypeStruct((hidden, vocab), jnp.float32, sharding=NamedSharding(mesh, w_spec))

    def whole(x, w):
        return jnp.max(x @ w, axis=-1)

    def chunked(x, w):
        blocks = x.reshape(8, n // chunk, chunk // 8, hidden).transpose(1, 0, 2, 3)
        return jax.lax.map(lambda rows: jnp.max(rows.reshape(chunk, hidden) @ w, axis=-1), blocks)

    def gathered(fn):
        hlo = jax.jit(fn).lower(x, w).compile().as_text()
        return collective_elements(hlo).get("all-gather", 0)

    line = {"n": n, "hidden": hidden, "vocab": vocab, "whole": gathered(whole)}
    print(json.dumps(line | {"chunked": gathered(chunked)}), flush=True)


def main(tokens_per_device, hidden, vocab, chunk, modes, dtypes, layouts=None):
    """Prints a JSON line per cell and loss, and returns them."""
    lines = []
    for mode_name in modes:
        for layout, (mesh, x_spec, w_spec, y_spec) in fused_layouts(MODES[mode_name][0]).items():
            if layouts is not None and layout not in layouts:
                continue
            n = tokens_per_device * (8 if y_spec != P() else 1)
            for dtype in dtypes:

                def shape(dims, dt, spec, mesh=mesh):
                    return jax.ShapeDtypeStruct(dims, dt, sharding=NamedSharding(mesh, spec))

                args = (
                    shape((n, hidden), dtype, x_spec),
                    shape((hidden, vocab), dtype, w_spec),
                    shape((n,), jnp.int32, y_spec),
                    shape((hidden, vocab), dtype, w_spec),
                )
                baselines = {}
                for name, (fused, baseline) in losses(chunk, layout, mesh, mode_name).items():
                    if baseline not in baselines:
                        baselines[baseline] = count(baseline, mesh, mode_name, args)
                    line = {
                        "mode": mode_name, "layout": layout, "dtype": jnp.dtype(dtype).name,
                        "loss": name, "fused": count(fused, mesh, mode_name, args),
                        "unfused": baselines[baseline],
                    }  # fmt: skip
                    print(json.dumps(line), flush=True)
                    lines.append(line)
    return lines


if __name__ == "__main__":
    assert jax.device_count() == 8, jax.devices()
    if sys.argv[1] == "matrix":  # every layout, mode and dtype at a small shape
        main(256, 64, 4096, 64, list(MODES), [jnp.bfloat16, jnp.float32])
    elif sys.argv[1] == "sample":  # two cells of the matrix
        main(256, 64, 4096, 64, ["auto_mesh"], [jnp.bfloat16], ["fsdp", "data+vocab"])
    elif sys.argv[1] == "no_mesh_fsdp":  # the cell the partitioning rule of hidden_whole serves
        main(256, 64, 4096, 64, ["auto"], [jnp.float32], ["fsdp"])
        export_sharded(*fused_layouts(MODES["auto"][0])["fsdp"][:3])
    elif sys.argv[1] == "same_axis_minimal":
        same_axis_minimal()
    else:  # the training shape; "large PATH" also saves the lines (docs/sharding.md)
        lines = main(8192, 1024, 32768, None, list(MODES), [jnp.bfloat16, jnp.float32])
        if len(sys.argv) > 2:
            saved = {"environment": environment(), "shape": [8192, 1024, 32768]}
            pathlib.Path(sys.argv[2]).write_text(json.dumps(saved | {"cells": lines}, indent=1))
