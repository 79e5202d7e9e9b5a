"""One process of a multi-process JAX program on CPU (gloo collectives).

Run by tests/test_multiprocess.py as ``python multiprocess_cases.py PORT NUM_PROCESSES
PROCESS_ID``: each process has 4 CPU devices, so 2 processes make an 8-device mesh of
``("data", "vocab")`` = (2, 4) whose devices span both processes. Every process builds
its part of the global inputs (``jax.make_array_from_process_local_data``), runs the
jitted value-and-gradient steps, compares its own shards of every result with the
single-device computation, and prints one JSON line per case.
"""

import json
import os
import re
import sys

if __name__ == "__main__":  # not when pytest's doctest collector imports this file
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    )
    os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import jaxloss as jl  # noqa: E402

N, H, V = 64, 16, 1000  # V appears in no other shape, so it identifies vocabulary-wide arrays


def vocab_wide_gathers(hlo: str) -> list[str]:
    lines = [line for line in hlo.splitlines() if re.search(r"all-gather(-start)?\(", line)]
    return [line.strip()[:200] for line in lines if re.search(rf"[\[,]{V}[\],]", line)]


def global_array(mesh, spec, full: np.ndarray):
    """The global array of ``full`` laid out by ``spec``, built from what this process
    holds: the rows (first axis) its devices need, as a multi-host input pipeline would."""
    sharding = NamedSharding(mesh, spec)
    return jax.make_array_from_callback(full.shape, sharding, lambda index: full[index])


def max_error(result, reference) -> float:
    """Largest difference over this process's shards of ``result``."""
    errors = [0.0]
    for leaf, ref in zip(jax.tree.leaves(result), jax.tree.leaves(reference), strict=True):
        ref = np.asarray(ref)
        for shard in leaf.addressable_shards:
            errors.append(float(np.max(np.abs(np.asarray(shard.data) - ref[shard.index]))))
    return max(errors)


def cases(weight):
    return {
        "cross_entropy": lambda x, y: jl.cross_entropy(x, y, weight=weight, label_smoothing=0.1),
        "cross_entropy_sequence_mean": lambda x, y: jl.cross_entropy(
            x, y, segment_ids=(jnp.arange(N) // 5 + 1).reshape(y.shape), reduction="sequence_mean"
        ),
    }


def main(port: int, num_processes: int, process_id: int) -> None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"localhost:{port}",
        num_processes=num_processes,
        process_id=process_id,
    )
    assert jax.process_count() == num_processes and jax.device_count() == 4 * num_processes
    mesh = jax.make_mesh((2, 4), ("data", "vocab"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    # The same global data in every process, from a seed: each keeps its own shards.
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(N, V)).astype(np.float32) * 3
    y = rng.integers(0, V, N).astype(np.int32)
    y[::7] = -100
    hidden = rng.normal(size=(N, H)).astype(np.float32)
    w = (rng.normal(size=(H, V)) / 4).astype(np.float32)
    weight = np.linspace(0.5, 1.5, V).astype(np.float32)
    layouts = {
        "batch": (P("data", None), P("data")),
        "vocab": (P(None, "vocab"), P()),
        "batch+vocab": (P("data", "vocab"), P("data")),
    }
    with jax.default_device(jax.local_devices()[0]):
        references = {
            name: jax.jit(jax.value_and_grad(fn))(logits, y) for name, fn in cases(weight).items()
        }
    for layout, (logit_spec, row_spec) in layouts.items():
        args = (global_array(mesh, logit_spec, logits), global_array(mesh, row_spec, y))
        for name, fn in cases(global_array(mesh, P(), weight)).items():
            compiled = jax.jit(jax.value_and_grad(fn)).lower(*args).compile()
            value, grad = compiled(*args)
            report(layout, name, value, grad, *references[name], compiled.as_text())

    # Called eagerly (no jit of the caller's own) with a token_weight that spans both
    # processes: its values cannot be read here, so they go unchecked rather than fetched.
    token_weight = rng.uniform(0.0, 2.0, N).astype(np.float32)
    with jax.default_device(jax.local_devices()[0]):
        reference = jax.value_and_grad(jl.cross_entropy)(logits, y, token_weight=token_weight)
    args = (global_array(mesh, P("data", None), logits), global_array(mesh, P("data"), y))
    tw = global_array(mesh, P("data"), token_weight)
    assert not tw.is_fully_addressable
    value, grad = jax.value_and_grad(jl.cross_entropy)(*args, token_weight=tw)
    report("batch", "cross_entropy_eager_token_weight", value, grad, *reference, "")

    # The language-model head: tokens over "data", w's vocabulary over "vocab".
    def linear(h, w, y, passes=None):
        return jl.linear_cross_entropy(h, w, y, chunk_size=8, label_smoothing=0.1, passes=passes)

    def distill(h, w, y):
        return jl.linear_kl_div(h, w, h[::-1], w[:, ::-1], targets=y, chunk_size=8)

    for name, fn in (("linear_cross_entropy", linear), ("linear_kl_div", distill)):
        step = jax.value_and_grad(fn, argnums=(0, 1))
        with jax.default_device(jax.local_devices()[0]):
            reference = jax.jit(step)(hidden, w, y)
        args = (
            global_array(mesh, P("data", None), hidden),
            global_array(mesh, P(None, "vocab"), w),
            global_array(mesh, P("data"), y),
        )
        compiled = jax.jit(step).lower(*args).compile()
        value, grads = compiled(*args)
        report("tokens+vocab", name, value, grads, *reference, compiled.as_text())


def report(layout, name, value, grad, ref_value, ref_grad, hlo):
    print(
        json.dumps(
            {
                "process": jax.process_index(),
                "layout": layout,
                "case": name,
                "value": float(ref_value),
                "value_error": abs(float(value.addressable_data(0)) - float(ref_value)),
                "grad_error": max_error(grad, ref_grad),
                "vocab_wide_all_gathers": vocab_wide_gathers(hlo),
                "all_gathers": len(re.findall(r"all-gather(?:-start)?\(", hlo)),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main(*map(int, sys.argv[1:4]))
    jax.distributed.shutdown()
