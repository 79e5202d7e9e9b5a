"""The contrastive losses on 8 host CPU devices, the batch split over them.

Executed by tests/test_contrastive.py in a subprocess (the device count is fixed when
JAX starts). ``agree``: in the three modes of tests/sharded_cases.py and inside
``shard_map`` with ``axis_name``, each loss's value and the gradients of all its
floating arguments against one device, a JSON line per case. ``measure B D [PATH]``:
the compiled ``value_and_grad`` of each loss and of its written-out form in the same
layout, compiled only: collective elements (loops weighted by their trip counts) and
temporary bytes per device, a JSON line per cell (saved to PATH if given). ``unsplit B
D``: the batch on one device of the 8, with no mesh set and under a one-device mesh:
each CLIP and SigLIP program's temporaries, and on a small batch its value against the
same loss with the batch split. ``second_order``: in float64 with no mesh set, the batch
split into groups whose last chunk is padded, ``check_grads`` of CLIP and SigLIP to
second order in both modes, and the value against the written-out loss's.
"""

import contextlib
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
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

import jaxloss as jl  # noqa: E402
from benchmarks.measure import collective_elements, environment  # noqa: E402
from tests.sharded_cases import MODES, in_mode  # noqa: E402

ROWS = P("d", None)
SPECS = (ROWS, ROWS, P(), P(), P("d"))  # x, y, scale, bias, labels


def _ce(z, targets):
    return jl.cross_entropy(z, targets, reduction="none")


def _signs(rows, columns, offset):
    return jnp.where(jnp.arange(rows)[:, None] + offset == jnp.arange(columns), 1.0, -1.0)


def _ntxent_rows(u, all_u, labels, all_labels, t, offset):
    """Each row's NT-Xent from its full row of similarities (the written-out form)."""
    z = u @ all_u.T / t
    own = jnp.arange(u.shape[0])[:, None] + offset == jnp.arange(all_u.shape[0])
    same = labels[:, None] == all_labels[None, :]
    negatives = jnp.where(same, -jnp.inf, z)
    n = jax.nn.logsumexp(negatives, axis=-1, keepdims=True)
    return jnp.sum(jnp.where(same & ~own, jax.nn.softplus(n - z), 0.0), axis=-1)


def _unit(e):
    return e / jnp.linalg.norm(e, axis=-1, keepdims=True)


def _whole(a):
    """``a`` replicated where axis types are explicit (the written-out ``x @ y.T`` of
    two row-split operands is refused there); as it is elsewhere."""
    if jax.typeof(a).sharding.mesh.are_all_axes_explicit:
        return jax.sharding.reshard(a, P())
    return a


def naive(name):
    """The written-out loss over the whole batch: the partitioner lays it out."""

    def clip(x, y, s, b, labels):
        z, pairs = s * x @ _whole(y).T + b, jnp.arange(x.shape[0])
        return jnp.mean(_ce(z, pairs) + _ce(z.T, pairs)) / 2

    def siglip(x, y, s, b, labels):
        z = s * x @ _whole(y).T + b
        return -jnp.sum(jax.nn.log_sigmoid(_signs(*z.shape, 0) * z)) / x.shape[0]

    def ntxent(x, y, s, b, labels):
        u = _unit(x)
        per_row = _ntxent_rows(u, _whole(u), labels, _whole(labels), s, 0)
        same = labels[:, None] == _whole(labels)[None, :]
        return jnp.sum(per_row) / (jnp.sum(same) - x.shape[0])

    return {"contrastive_loss": clip, "sigmoid_contrastive_loss": siglip,
            "ntxent_loss": ntxent}[name]  # fmt: skip


def naive_local(name):
    """Inside ``shard_map``: this device's rows against the gathered batch (open_clip's
    ``local_loss=True`` with the features gathered with their gradient)."""

    def gathered(a):
        return jax.lax.all_gather(a, "d", axis=0, tiled=True)

    def clip(x, y, s, b, labels):
        offset = jax.lax.axis_index("d") * x.shape[0]
        pairs = jnp.arange(x.shape[0]) + offset
        rows = _ce(s * x @ gathered(y).T + b, pairs) + _ce(s * y @ gathered(x).T + b, pairs)
        return jax.lax.psum(jnp.sum(rows), "d") / (2 * x.shape[0] * 8)

    def siglip(x, y, s, b, labels):
        z = s * x @ gathered(y).T + b
        signs = _signs(*z.shape, jax.lax.axis_index("d") * x.shape[0])
        total = -jnp.sum(jax.nn.log_sigmoid(signs * z))
        return jax.lax.psum(total, "d") / (x.shape[0] * 8)

    def ntxent(x, y, s, b, labels):
        u, offset = _unit(x), jax.lax.axis_index("d") * x.shape[0]
        all_labels = gathered(labels)
        per_row = _ntxent_rows(u, gathered(u), labels, all_labels, s, offset)
        same = jnp.sum(labels[:, None] == all_labels[None, :]) - x.shape[0]
        return jax.lax.psum(jnp.sum(per_row), "d") / jax.lax.psum(same, "d")

    return {"contrastive_loss": clip, "sigmoid_contrastive_loss": siglip,
            "ntxent_loss": ntxent}[name]  # fmt: skip


def fused(name, axis_name=None, chunk_size=None):
    def clip(x, y, s, b, labels):
        return jl.contrastive_loss(x, y, logit_scale=s, logit_bias=b, chunk_size=chunk_size,
                                   axis_name=axis_name)  # fmt: skip

    def siglip(x, y, s, b, labels):
        return jl.sigmoid_contrastive_loss(x, y, logit_scale=s, logit_bias=b,
                                           chunk_size=chunk_size, axis_name=axis_name)  # fmt: skip

    def ntxent(x, y, s, b, labels):
        return jl.ntxent_loss(x, labels, s, chunk_size=chunk_size, axis_name=axis_name)

    return {"contrastive_loss": clip, "sigmoid_contrastive_loss": siglip,
            "ntxent_loss": ntxent}[name]  # fmt: skip


NAMES = ("contrastive_loss", "sigmoid_contrastive_loss", "ntxent_loss")


def in_shard_map(fn, mesh):
    return jax.shard_map(fn, mesh=mesh, in_specs=SPECS, out_specs=P())


def step(fn):
    return jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2, 3)))


def inputs(batch, dim):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, dim)).astype(np.float32) / np.sqrt(dim)
    y = rng.standard_normal((batch, dim)).astype(np.float32) / np.sqrt(dim)
    labels = rng.integers(0, batch // 4, batch).astype(np.int32)
    return x, y, np.float32(4.0), np.float32(-1.5), labels


def placed(arrays, mesh):
    pairs = zip(arrays, SPECS, strict=True)
    return tuple(jax.device_put(a, NamedSharding(mesh, s)) for a, s in pairs)


def agree():
    arrays = inputs(64, 8)
    for name in NAMES:
        value, grads = step(fused(name))(*arrays)
        runs = {}
        for mode_name, (axis_type, _) in MODES.items():
            mesh = jax.make_mesh((8,), ("d",), axis_types=(axis_type,))
            with in_mode(mesh, mode_name):
                runs[mode_name] = step(fused(name, chunk_size=8))(*placed(arrays, mesh))
        mesh = jax.make_mesh((8,), ("d",), axis_types=(jax.sharding.AxisType.Explicit,))
        with jax.set_mesh(mesh):
            fn = in_shard_map(fused(name, axis_name="d", chunk_size=4), mesh)
            runs["shard_map"] = step(fn)(*placed(arrays, mesh))
        for case, (v, g) in runs.items():
            errors = [float(np.max(np.abs(np.asarray(a) - np.asarray(b)), initial=0.0))
                      for a, b in zip(g, grads, strict=True)]  # fmt: skip
            line = {"loss": name, "case": case, "value": float(value),
                    "value_error": abs(float(v) - float(value)), "grad_error": max(errors),
                    "grad_scale": max(float(np.max(np.abs(a))) for a in grads)}  # fmt: skip
            print(json.dumps(line), flush=True)


def shapes(batch, dim, mesh):
    specs = zip(((batch, dim), (batch, dim), (), (), (batch,)), SPECS, strict=True)
    dtypes = (jnp.float32,) * 4 + (jnp.int32,)
    return [jax.ShapeDtypeStruct(s, d, sharding=NamedSharding(mesh, spec))
            for (s, spec), d in zip(specs, dtypes, strict=True)]  # fmt: skip


def compiled_counts(fn, mesh, mode_name, args):
    with jax.set_mesh(mesh) if mode_name == "shard_map" else in_mode(mesh, mode_name):
        compiled = step(fn).lower(*args).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    return sum(collective_elements(compiled.as_text()).values()), int(temp)


def measure(batch, dim):
    lines = []
    for mode_name, (axis_type, _) in [*MODES.items(), ("shard_map", MODES["explicit"])]:
        mesh = jax.make_mesh((8,), ("d",), axis_types=(axis_type,))
        args = shapes(batch, dim, mesh)
        for name in NAMES:
            if mode_name == "shard_map":
                ours = in_shard_map(fused(name, axis_name="d"), mesh)
                theirs = in_shard_map(naive_local(name), mesh)
            else:
                ours, theirs = fused(name), naive(name)
            fused_elements, fused_temp = compiled_counts(ours, mesh, mode_name, args)
            naive_elements, naive_temp = compiled_counts(theirs, mesh, mode_name, args)
            line = {"mode": mode_name, "loss": name, "fused_elements": fused_elements,
                    "naive_elements": naive_elements, "fused_temp": fused_temp,
                    "naive_temp": naive_temp}  # fmt: skip
            print(json.dumps(line), flush=True)
            lines.append(line)
    return lines


def unsplit(batch, dim):
    one = jax.make_mesh((1,), ("d",), devices=jax.devices()[:1],
                        axis_types=(jax.sharding.AxisType.Auto,))  # fmt: skip
    plain = [jax.ShapeDtypeStruct(s.shape, s.dtype) for s in shapes(batch, dim, one)]
    small = inputs(64, 8)
    split_mesh = jax.make_mesh((8,), ("d",), axis_types=(jax.sharding.AxisType.Auto,))
    for name in NAMES[:2]:
        split = float(step(fused(name))(*placed(small, split_mesh))[0])
        for setting in ("no mesh", "one-device mesh"):
            with jax.set_mesh(one) if setting != "no mesh" else contextlib.nullcontext():
                program = step(fused(name))
                temp = program.lower(*plain).compile().memory_analysis().temp_size_in_bytes
                value = float(program(*small)[0])
            line = {"loss": name, "setting": setting, "temp": int(temp),
                    "value_error": abs(value - split), "value": split}  # fmt: skip
            print(json.dumps(line), flush=True)


def second_order():
    jax.config.update("jax_enable_x64", True)
    mesh = jax.make_mesh((8,), ("d",), axis_types=(jax.sharding.AxisType.Auto,))
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((2, 40, 6))  # 5 rows per device, in chunks of 3
    split = [jax.device_put(a, NamedSharding(mesh, ROWS)) for a in (x, y)]
    for name in NAMES[:2]:
        for chunk_size in (None, 3):
            fn = jax.jit(lambda x, y, s, b: fused(name, chunk_size=chunk_size)(x, y, s, b, None))
            check_grads(fn, (*split, 1.3, -0.4), order=2, modes=("fwd", "rev"))
            written_out = float(naive(name)(x, y, 1.3, -0.4, None))
            error = abs(float(fn(*split, 1.3, -0.4)) - written_out)
            line = {"loss": name, "chunk_size": chunk_size, "value_error": error}
            print(json.dumps(line), flush=True)


MODE_NAMES = {
    "auto": "automatic, no mesh set",
    "auto_mesh": "automatic, `jax.set_mesh`",
    "explicit": "explicit, `jax.set_mesh`",
    "shard_map": "`shard_map`, `axis_name=`",
}


def table(cells) -> str:
    """docs/contrastive.md's table of a saved ``measure`` run."""
    lines = [
        "| mode | loss | collective elements | × written out | temporaries per device "
        "| × written out |",
        "|---|---|---|---|---|---|",
    ]
    for c in cells:
        elements = c["fused_elements"] / c["naive_elements"]
        temp = c["fused_temp"] / c["naive_temp"]
        lines.append(
            f"| {MODE_NAMES[c['mode']]} | `{c['loss']}` | {c['fused_elements']:,} "
            f"| {elements:.2f} | {c['fused_temp'] / 2**20:.1f} MiB | {temp:.3f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    assert jax.device_count() == 8, jax.devices()
    if sys.argv[1] == "agree":
        agree()
    elif sys.argv[1] == "second_order":
        second_order()
    elif sys.argv[1] == "unsplit":
        unsplit(int(sys.argv[2]), int(sys.argv[3]))
    else:
        batch, dim = int(sys.argv[2]), int(sys.argv[3])
        lines = measure(batch, dim)
        if len(sys.argv) > 4:
            saved = {"environment": environment(), "shape": [batch, dim], "cells": lines}
            pathlib.Path(sys.argv[4]).write_text(json.dumps(saved, indent=1))
