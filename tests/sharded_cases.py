"""Runs jaxloss on 8 host CPU devices and prints one JSON line per case.

Executed by tests/test_sharding.py in a subprocess, because the device count must
be set before JAX is first imported.
"""

import json
import os
import re
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
from jaxloss import _linear  # noqa: E402

DEFAULT_CHUNK_BYTES = _linear.CHUNK_BYTES

N, H, V = 48, 16, 1024  # V appears in no other shape, so it identifies vocabulary-wide arrays


def vocab_wide_gathers(hlo: str) -> list[str]:
    lines = [line for line in hlo.splitlines() if re.search(r"all-gather(-start)?\(", line)]
    return [line.strip()[:200] for line in lines if re.search(rf"[\[,]{V}[\],]", line)]


def loss_cases(x, y, t, weight):
    return {
        "cross_entropy": (lambda x: jl.cross_entropy(x, y), x),
        "cross_entropy_smoothing_weight": (
            lambda x: jl.cross_entropy(x, y, label_smoothing=0.1, weight=weight),
            x,
        ),
        "cross_entropy_probs": (lambda x: jl.cross_entropy(x, t, label_smoothing=0.1), x),
        "cross_entropy_z_loss": (lambda x: jl.cross_entropy(x, y, z_loss=1e-3), x),
        "nll_loss": (lambda x: jl.nll_loss(jl.log_softmax(x), y), x),
        "log_softmax": (lambda x: jnp.sum(jl.log_softmax(x) * t), x),
        "bce_with_logits": (lambda x: jl.binary_cross_entropy_with_logits(x, t), x),
        "kl_div": (lambda x: jl.kl_div(jl.log_softmax(x), t, reduction="batchmean"), x),
        "cross_entropy_sequence_mean": (
            lambda x: jl.cross_entropy(
                x,
                y,
                token_weight=jnp.linspace(0.0, 1.0, N),
                segment_ids=jnp.arange(N) % 5,
                reduction="sequence_mean",
            ),
            x,
        ),
    }


# The unsharded value and gradient of each case, computed once for all layouts and modes.
REFERENCES: dict[str, tuple] = {}


def run(mode_name: str) -> None:
    mode = getattr(jax.sharding.AxisType, mode_name)
    keys = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(keys[0], (N, V))
    y = jax.random.randint(keys[1], (N,), 0, V).at[3].set(-100)
    t = jax.nn.softmax(jax.random.normal(keys[2], (N, V)))
    hidden = jax.random.normal(keys[3], (N, H))
    w = jax.random.normal(keys[2], (H, V)) / 4
    layouts = {
        "data": (jax.make_mesh((8,), ("d",), axis_types=(mode,)), P("d", None), P("d")),
        "vocab": (jax.make_mesh((8,), ("v",), axis_types=(mode,)), P(None, "v"), P()),
        "data+vocab": (
            jax.make_mesh((2, 4), ("d", "v"), axis_types=(mode, mode)),
            P("d", "v"),
            P("d"),
        ),
    }
    for layout, (mesh, logits_spec, row_spec) in layouts.items():
        put = lambda a, spec: jax.device_put(a, NamedSharding(mesh, spec))  # noqa: E731
        ys, ts = put(y, row_spec), put(t, logits_spec)
        # Class weights are V floats: kept replicated, every device looks up its rows' own.
        weight = jnp.linspace(0.5, 1.0, V)
        for name, (fn, arg) in loss_cases(x, ys, ts, put(weight, P())).items():
            sharded_arg = put(arg, logits_spec)
            compiled = jax.jit(jax.value_and_grad(fn)).lower(sharded_arg).compile()
            value, grad = compiled(sharded_arg)
            if name not in REFERENCES:
                ref_fn = loss_cases(x, y, t, weight)[name][0]
                REFERENCES[name] = jax.jit(jax.value_and_grad(ref_fn))(x)
            report(mode_name, layout, name, value, grad, *REFERENCES[name], compiled.as_text())
        w_spec = P(None, logits_spec[1])
        x_spec = P(logits_spec[0], None)
        # The weight gradient is accumulated one vocabulary slice at a time when H x V is
        # large; a small CHUNK_BYTES makes these small shapes take that path too.
        linear_cases = [("mean", None, None), ("none", None, None), ("mean", 4096, None)]
        if layout == "data":  # two passes slice the vocabulary: for a w that is not sharded
            linear_cases.append(("mean", None, 2))
        for reduction, chunk_bytes, passes in linear_cases:
            _linear.CHUNK_BYTES = chunk_bytes or DEFAULT_CHUNK_BYTES
            name = f"linear_cross_entropy_{reduction}" + ("_sliced" if chunk_bytes else "")
            name += "_two_pass" if passes == 2 else ""

            def linear(h, w, y, reduction=reduction, passes=passes):
                out = jl.linear_cross_entropy(
                    h,
                    w,
                    y,
                    reduction=reduction,
                    chunk_size=16,
                    label_smoothing=0.1,
                    passes=passes,
                    vocab_chunk_size=384,
                )
                return jnp.sum(out)

            step = jax.jit(jax.value_and_grad(linear, argnums=(0, 1)))
            args = (put(hidden, x_spec), put(w, w_spec), ys)
            compiled = step.lower(*args).compile()
            value, grads = compiled(*args)
            if name not in REFERENCES:
                REFERENCES[name] = step(hidden, w, y)
            report(mode_name, layout, name, value, grads, *REFERENCES[name], compiled.as_text())
        _linear.CHUNK_BYTES = DEFAULT_CHUNK_BYTES
        # The language-model options: token weights and packed sequences, and distillation.
        teacher_w = w[::-1] / 2
        token_cases = {
            "linear_cross_entropy_sequence_mean": lambda h, w, y: jl.linear_cross_entropy(
                h,
                w,
                y,
                chunk_size=16,
                token_weight=jnp.linspace(0.0, 1.0, N),
                segment_ids=jnp.arange(N) % 5,
                reduction="sequence_mean",
            ),
            "linear_kl_div": lambda h, w, y: jl.linear_kl_div(
                h, w, h[::-1], teacher_w, targets=y, chunk_size=16, temperature=2.0
            ),
        }
        for name, fn in token_cases.items():
            step = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))
            args = (put(hidden, x_spec), put(w, w_spec), ys)
            compiled = step.lower(*args).compile()
            value, grads = compiled(*args)
            if name not in REFERENCES:
                REFERENCES[name] = step(hidden, w, y)
            report(mode_name, layout, name, value, grads, *REFERENCES[name], compiled.as_text())


def data_parallel_normalizer() -> None:
    """Data parallelism by hand (shard_map): each device's loss is normalized by the global
    token count, and the sum of the devices' gradients is the full batch's gradient."""
    mesh = jax.make_mesh((8,), ("d",), axis_types=(jax.sharding.AxisType.Auto,))
    keys = jax.random.split(jax.random.key(1), 3)
    hidden = jax.random.normal(keys[0], (N, H))
    w = jax.random.normal(keys[1], (H, V)) / 4
    y = jax.random.randint(keys[2], (N,), 0, V).at[:7].set(-100)  # unevenly kept

    def per_device(h, w, y):
        count = jax.lax.psum(jnp.sum(y != -100), "d")
        loss, grads = jax.value_and_grad(jl.linear_cross_entropy, (0, 1))(
            h, w, y, normalizer=count, chunk_size=4
        )
        # w is the same on every device: shard_map's transpose already sums its gradient
        # over the devices (the all-reduce of data parallelism).
        return jax.lax.psum(loss, "d"), grads[0], grads[1]

    step = jax.jit(
        jax.shard_map(
            per_device,
            mesh=mesh,
            in_specs=(P("d"), P(), P("d")),
            out_specs=(P(), P("d"), P()),
        )
    )
    value, grad_h, grad_w = step(hidden, w, y)
    ref_value, ref_grads = jax.value_and_grad(jl.linear_cross_entropy, (0, 1))(hidden, w, y)
    report("Auto", "shard_map", "data_parallel_normalizer", value, (grad_h, grad_w),
           ref_value, ref_grads, "")  # fmt: skip


ALL_REDUCE = re.compile(r"= (\(.*?\)|\S+) all-reduce(?:-start)?\(")


def all_reduced_floats(hlo: str) -> dict[str, int]:
    """Elements all-reduced by the compiled program, by where: in a loop body ("loop",
    once per chunk) or in the entry computation ("once")."""
    totals = {"loop": 0, "once": 0}
    where = "once"
    for line in hlo.splitlines():
        if line and not line.startswith(" ") and line.rstrip().endswith("{"):
            where = "once" if line.startswith("ENTRY") else "loop"
        match = ALL_REDUCE.search(line)
        if match:
            for dims in re.findall(r"\w+\[([\d,]*)\]", match.group(1)):
                size = 1
                for d in filter(None, dims.split(",")):
                    size *= int(d)
                totals[where] += size
    return totals


def communication() -> None:
    """The all-reduced elements of each loss on a (data=2, vocab=4) mesh, for the
    per-step formulas of docs/sharding.md."""
    mesh = jax.make_mesh((2, 4), ("data", "vocab"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    put = lambda a, *spec: jax.device_put(a, NamedSharding(mesh, P(*spec)))  # noqa: E731
    keys = jax.random.split(jax.random.key(2), 3)
    y = put(jax.random.randint(keys[0], (N,), 0, V), "data")
    logits = put(jax.random.normal(keys[1], (N, V)), "data", "vocab")
    hidden = put(jax.random.normal(keys[2], (N, H)), "data", None)
    w = put(jnp.ones((H, V)) / H, None, "vocab")
    cases = {
        "cross_entropy": (lambda x: jl.cross_entropy(x, y), (logits,)),
        "cross_entropy_smoothing": (
            lambda x: jl.cross_entropy(x, y, label_smoothing=0.1),
            (logits,),
        ),
        "linear_cross_entropy": (
            lambda h, w: jl.linear_cross_entropy(h, w, y, chunk_size=8),
            (hidden, w),
        ),
        "linear_kl_div": (
            lambda h, w: jl.linear_kl_div(h, w, h[::-1], w[:, ::-1], chunk_size=8),
            (hidden, w),
        ),
    }
    for name, (fn, args) in cases.items():
        step = jax.jit(jax.value_and_grad(fn, argnums=tuple(range(len(args)))))
        totals = all_reduced_floats(step.lower(*args).compile().as_text())
        print(json.dumps({"communication": name, "chunk": 8, **totals}), flush=True)


def report(mode, layout, name, value, grad, ref_value, ref_grad, hlo):
    errors = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), grad, ref_grad)
    print(
        json.dumps(
            {
                "mode": mode,
                "layout": layout,
                "case": name,
                "value_error": float(abs(value - ref_value)),
                "value": float(ref_value),
                "grad_error": max(jax.tree.leaves(errors)),
                "vocab_wide_all_gathers": vocab_wide_gathers(hlo),
                "all_gathers": len(re.findall(r"all-gather(?:-start)?\(", hlo)),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    assert jax.device_count() == 8, jax.devices()
    for mode_name in sys.argv[1:] or ["Auto", "Explicit"]:
        run(mode_name)
    data_parallel_normalizer()
    communication()
