"""Runs jaxloss on 8 host CPU devices and prints one JSON line per case:
``python tests/sharded_cases.py {logits,ctc,fused} MODE...`` for one or more of the
modes in ``MODES``, the one-device references computed once for all of them.

Executed by tests/test_sharding.py in a subprocess, because the device count must
be set before JAX is first imported.
"""

import contextlib
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
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import jaxloss as jl  # noqa: E402
from tests import builders as build  # noqa: E402

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
        "softmax_focal_loss": (lambda x: jl.softmax_focal_loss(x, y, alpha=weight), x),
        "poly1_cross_entropy": (lambda x: jl.poly1_cross_entropy(x, y, weight=weight), x),
        # The margin losses have no ignore_index: the ignored row's -100 is made a class.
        "multi_margin_loss": (lambda x: jl.multi_margin_loss(x, abs(y), weight=weight), x),
        "multiclass_hinge_loss": (lambda x: jl.multiclass_hinge_loss(x, abs(y)), x),
        "multilabel_soft_margin_loss": (lambda x: jl.multilabel_soft_margin_loss(x, t), x),
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


def reference(name: str, compute):
    if name not in REFERENCES:
        REFERENCES[name] = compute()
    return REFERENCES[name]


# How users run sharded code: automatic sharding with sharded inputs and no mesh set,
# automatic under jax.set_mesh, and explicit axis types under jax.set_mesh.
MODES = {
    "auto": (jax.sharding.AxisType.Auto, False),
    "auto_mesh": (jax.sharding.AxisType.Auto, True),
    "explicit": (jax.sharding.AxisType.Explicit, True),
}


def in_mode(mesh, mode_name):
    return jax.set_mesh(mesh) if MODES[mode_name][1] else contextlib.nullcontext()


def inputs():
    x = build.normal((N, V), 0)
    y = build.integers((N,), 1, 0, V).at[3].set(-100)
    t = jax.nn.softmax(build.normal((N, V), 2))
    hidden = build.normal((N, H), 3)
    w = build.normal((H, V), 4) / 4
    return x, y, t, hidden, w


# The losses that all-gather class-sharded scores (docs/sharding.md names them): the
# sparsemax threshold sorts each row, and the multilabel hinge pairs every two classes.
GATHERING = ("sparsemax", "multiclass_sparsemax_loss", "multilabel_margin_loss")


def gathering_cases(x, y, t, weight):
    del t, weight
    labels = abs(y)
    # Two target classes for each of 8 rows (the pairs cost C * C per row), fixed lists:
    # explicit sharding would not slice the batch-sharded labels.
    lists = np.full((8, V), -1)
    lists[:, :2] = np.arange(16).reshape(8, 2) * 37 % V
    return {
        "sparsemax": (lambda x: jnp.sum(jl.sparsemax(x) * x), x),
        "multiclass_sparsemax_loss": (lambda x: jl.multiclass_sparsemax_loss(x, labels), x),
        "multilabel_margin_loss": (lambda x: jl.multilabel_margin_loss(x[:8], lists), x),
    }


def all_logit_cases(x, y, t, weight):
    return {**loss_cases(x, y, t, weight), **gathering_cases(x, y, t, weight)}


def run_logit_losses(mode_name: str) -> None:
    """The losses of logits, with the logits' tokens, vocabulary or both sharded."""
    mode = MODES[mode_name][0]
    x, y, t, _, _ = inputs()
    layouts = {
        "data": (jax.make_mesh((8,), ("d",), axis_types=(mode,)), P("d", None), P("d")),
        "vocab": (jax.make_mesh((8,), ("v",), axis_types=(mode,)), P(None, "v"), P()),
        "data+vocab": (
            jax.make_mesh((2, 4), ("d", "v"), axis_types=(mode, mode)),
            P("d", "v"),
            P("d"),
        ),
    }
    # Class weights are V floats: kept replicated, every device looks up its rows' own.
    weight = jnp.linspace(0.5, 1.0, V)
    for name, (fn, _) in all_logit_cases(x, y, t, weight).items():
        reference(name, lambda: jax.jit(jax.value_and_grad(fn))(x))
    for layout, (mesh, logits_spec, row_spec) in layouts.items():
        put = lambda a, spec: jax.device_put(a, NamedSharding(mesh, spec))  # noqa: E731
        with in_mode(mesh, mode_name):
            ys, ts = put(y, row_spec), put(t, logits_spec)
            for name, (fn, arg) in all_logit_cases(x, ys, ts, put(weight, P())).items():
                sharded_arg = put(arg, logits_spec)
                compiled = jax.jit(jax.value_and_grad(fn)).lower(sharded_arg).compile()
                value, grad = compiled(sharded_arg)
                report(mode_name, layout, name, value, grad, *REFERENCES[name], compiled.as_text())


def fused_layouts(mode):
    """Every layout that training uses for a language-model head: (mesh, x's spec, w's
    spec, the targets' spec)."""
    one = jax.make_mesh((8,), ("d",), axis_types=(mode,))
    two = jax.make_mesh((2, 4), ("d", "v"), axis_types=(mode, mode))
    return {
        "data": (one, P("d", None), P(None, None), P("d")),
        "fsdp": (one, P("d", None), P("d", None), P("d")),
        "vocab_on_data": (one, P("d", None), P(None, "d"), P("d")),
        "data+vocab": (two, P("d", None), P(None, "v"), P("d")),
        "vocab": (one, P(None, None), P(None, "d"), P()),
    }


def fused_cases(y, bias, put_rows=lambda a: a):
    """The fused losses in the options that change their loops; ``put_rows`` lays out
    per-token inputs as the tokens are."""

    def lce(**kwargs):
        return lambda h, w: jnp.sum(jl.linear_cross_entropy(h, w, y, chunk_size=16, **kwargs))

    def kl(**kwargs):
        return lambda h, w: jl.linear_kl_div(h, w, targets=y, chunk_size=16, **kwargs)

    def log_probs(h, w):  # a policy-gradient objective: cotangents on both outputs
        log_p, entropy = jl.linear_log_probs(h, w, y, bias=bias, temperature=1.5, chunk_size=16)
        return jnp.sum(jnp.cos(y.astype(log_p.dtype)) * log_p) + 0.1 * jnp.sum(entropy)

    topk_ids = (jnp.arange(N)[:, None] * 7 + jnp.arange(4)) % V
    in_use = V - 24  # a vocabulary padded to divide the devices
    y_in_use = jnp.where(y >= in_use, y % in_use, y)
    teacher_w = build.normal((H, V), 5) / 4
    return {
        "linear_cross_entropy_mean": lce(label_smoothing=0.1, bias=bias, vocab_chunk_size=384),
        "linear_cross_entropy_mean_one_pass": lce(label_smoothing=0.1, passes=1),
        "linear_cross_entropy_none": lce(reduction="none", label_smoothing=0.1),
        "linear_cross_entropy_sequence_mean": lce(
            token_weight=jnp.linspace(0.0, 1.0, N),
            segment_ids=jnp.arange(N) % 5,
            reduction="sequence_mean",
            z_loss=1e-3,
            logit_softcap=5.0,
        ),
        # A padded vocabulary, and a chunk size that is no multiple of the devices
        # (rounded up to 24 rows, a block of 3 of each device's rows).
        "linear_cross_entropy_padded": lambda h, w: jl.linear_cross_entropy(
            h, w, y_in_use, chunk_size=20, label_smoothing=0.1, vocab_size=in_use
        ),
        "linear_kl_div": kl(teacher_x=jnp.ones((N, H)) / 4, teacher_w=teacher_w, temperature=2.0),
        "linear_jsd": lambda h, w: jl.linear_jsd(
            h, w, jnp.ones((N, H)) / 4, teacher_w, beta=0.3, targets=y, chunk_size=16
        ),
        "linear_log_probs": log_probs,
        "linear_kl_div_topk": kl(
            teacher_topk=put_rows((topk_ids, -jnp.arange(4.0) * jnp.ones((N, 1)))), passes=2
        ),
    }


def run_fused_losses(mode_name: str) -> None:
    """linear_cross_entropy and linear_kl_div in every layout: equal to one device."""
    mode = MODES[mode_name][0]
    _, y, _, hidden, w = inputs()
    bias = jnp.linspace(-1.0, 1.0, V)
    for name, fn in fused_cases(y, bias).items():
        reference(name, lambda: jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))(hidden, w))
    for layout, (mesh, x_spec, w_spec, row_spec) in fused_layouts(mode).items():
        put = lambda a, spec: jax.device_put(a, NamedSharding(mesh, spec))  # noqa: E731
        with in_mode(mesh, mode_name):
            rows = lambda a: put(a, P(x_spec[0], None))  # noqa: E731
            cases = fused_cases(put(y, row_spec), put(bias, P(w_spec[1])), rows)
            for name, fn in cases.items():
                args = (put(hidden, x_spec), put(w, w_spec))
                step = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))
                try:
                    compiled = step.lower(*args).compile()
                except ValueError as error:
                    print(json.dumps({"mode": mode_name, "layout": layout, "case": name,
                                      "error": str(error)}), flush=True)  # fmt: skip
                    continue
                value, grads = compiled(*args)
                report(mode_name, layout, name, value, grads, *REFERENCES[name], compiled.as_text())


def fused_losses(mode_name: str) -> None:
    run_fused_losses(mode_name)
    data_parallel_normalizer(mode_name)
    vmapped_examples(mode_name)


def data_parallel_normalizer(mode_name: str) -> None:
    """Data parallelism by hand (the caller's own shard_map): each device's loss is
    normalized by the global token count, and the sum of the devices' gradients is the
    full batch's gradient; for linear_cross_entropy and linear_kl_div."""
    mesh = jax.make_mesh((8,), ("d",), axis_types=(MODES[mode_name][0],))
    hidden = build.normal((N, H), 6)
    w = build.normal((H, V), 7) / 4
    y = build.integers((N,), 8, 0, V).at[:7].set(-100)  # unevenly kept
    losses = {
        "data_parallel_normalizer": jl.linear_cross_entropy,
        "data_parallel_normalizer_kl": lambda h, w, y, **kw: jl.linear_kl_div(
            h, w, h / 2, w[::-1], targets=y, **kw
        ),
    }
    for name, loss in losses.items():

        def per_device(h, w, y, loss=loss):
            count = jax.lax.psum(jnp.sum(y != -100), "d")
            value, grads = jax.value_and_grad(loss, (0, 1))(h, w, y, normalizer=count, chunk_size=4)
            # w is the same on every device: shard_map's transpose already sums its
            # gradient over the devices (the all-reduce of data parallelism).
            return jax.lax.psum(value, "d"), grads[0], grads[1]

        step = jax.jit(
            jax.shard_map(
                per_device,
                mesh=mesh,
                in_specs=(P("d"), P(), P("d")),
                out_specs=(P(), P("d"), P()),
            )
        )
        ref_value, ref_grads = reference(
            name, lambda: jax.jit(jax.value_and_grad(loss, (0, 1)))(hidden, w, y)
        )
        put = lambda a, spec: jax.device_put(a, NamedSharding(mesh, spec))  # noqa: E731
        with in_mode(mesh, mode_name):
            value, grad_h, grad_w = step(put(hidden, P("d")), put(w, P()), put(y, P("d")))
        report(mode_name, "shard_map", name, value, (grad_h, grad_w), ref_value, ref_grads, "")


def vmapped_examples(mode_name: str) -> None:
    """``jax.vmap`` over examples split over the devices: each example as on one device,
    and no more communication than the unfused loss under the same vmap (one all-reduce
    of the weight gradient, no gather of the examples)."""
    from benchmarks.measure import collective_elements

    mesh = jax.make_mesh((8,), ("d",), axis_types=(MODES[mode_name][0],))
    hidden = build.normal((16, 6, H), 9)
    w = build.normal((H, V), 10) / 4
    y = build.integers((16, 6), 11, 0, V)
    losses = {
        "vmap_linear_cross_entropy": lambda h, w, y: jl.linear_cross_entropy(h, w, y),
        "vmap_linear_kl_div": lambda h, w, y: jl.linear_kl_div(h, w, h / 2, w[::-1], targets=y),
        "vmap_unfused": lambda h, w, y: jl.cross_entropy(h @ w, y),
    }
    put = lambda a, spec: jax.device_put(a, NamedSharding(mesh, spec))  # noqa: E731
    args = (put(hidden, P("d")), put(w, P()), put(y, P("d")))
    counts = {}
    for name, loss in losses.items():

        def total(h, w, y, loss=loss):
            return jnp.sum(jax.vmap(loss, (0, None, 0))(h, w, y) * jnp.arange(1.0, 17.0))

        ref_value, ref_grads = reference(
            name, lambda: jax.jit(jax.value_and_grad(total, (0, 1)))(hidden, w, y)
        )
        with in_mode(mesh, mode_name):
            compiled = jax.jit(jax.value_and_grad(total, (0, 1))).lower(*args).compile()
            value, grads = compiled(*args)
        counts[name] = sum(collective_elements(compiled.as_text()).values())
        report(mode_name, "vmap", name, value, grads, ref_value, ref_grads, compiled.as_text())
    print(json.dumps({"vmap_communication": counts}), flush=True)


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
    """The all-reduced elements of the losses of logits on a (data=2, vocab=4) mesh, for
    the per-step formulas of docs/sharding.md (the fused losses: communication_cases.py)."""
    mesh = jax.make_mesh((2, 4), ("data", "vocab"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    put = lambda a, *spec: jax.device_put(a, NamedSharding(mesh, P(*spec)))  # noqa: E731
    y = put(build.integers((N,), 12, 0, V), "data")
    logits = put(build.normal((N, V), 13), "data", "vocab")
    cases = {
        "cross_entropy": (lambda x: jl.cross_entropy(x, y), (logits,)),
        "cross_entropy_smoothing": (
            lambda x: jl.cross_entropy(x, y, label_smoothing=0.1),
            (logits,),
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


def ctc_losses(mode_name: str) -> None:
    """Both CTC layouts with the batch (the sequences) split over 8 devices."""
    frames, batch, classes, max_length = 12, 16, 24, 4
    logits = build.normal((batch, frames, classes), 14)
    lengths = build.integers((batch,), 15, 9, frames + 1)
    labels = build.integers((batch, max_length), 16, 1, classes)
    label_lengths = build.integers((batch,), 17, 0, max_length + 1)
    small = {
        "labels": labels, "lengths": lengths, "label_lengths": label_lengths,
        "paddings": (jnp.arange(frames) >= lengths[:, None]).astype(jnp.float32),
        "label_paddings": (jnp.arange(max_length) >= label_lengths[:, None]).astype(jnp.float32),
    }  # fmt: skip

    def time_major(lp, s):
        return jl.ctc_loss(lp, s["labels"], s["lengths"], s["label_lengths"], zero_infinity=True)

    def batch_major(z, s):
        return jl.ctc_loss_with_paddings(
            z, s["paddings"], s["labels"], s["label_paddings"], reduction="mean"
        )

    # (loss, its input, its batch axis)
    cases = {
        "ctc_loss": (time_major, jax.nn.log_softmax(logits).transpose(1, 0, 2), 1),
        "ctc_loss_with_paddings": (batch_major, logits, 0),
    }
    mesh = jax.make_mesh((8,), ("d",), axis_types=(MODES[mode_name][0],))
    put = lambda a, spec: jax.device_put(a, NamedSharding(mesh, spec))  # noqa: E731
    for name, (fn, arg, batch_axis) in cases.items():
        expected = reference(name, lambda: jax.jit(jax.value_and_grad(fn))(arg, small))
        spec = P(*["d" if a == batch_axis else None for a in range(3)])
        placed = {k: put(v, P("d", *[None] * (v.ndim - 1))) for k, v in small.items()}
        with in_mode(mesh, mode_name):
            sharded = put(arg, spec)
            compiled = jax.jit(jax.value_and_grad(fn)).lower(sharded, placed).compile()
            value, grad = compiled(sharded, placed)
        # The gradient stays split over the batch: each device holds 2 of the 16 sequences.
        assert grad.sharding.shard_shape(grad.shape)[batch_axis] == batch // 8, grad.sharding
        report(mode_name, "batch", name, value, grad, *expected, compiled.as_text())


def unplaced_arguments(mode_name: str) -> None:
    """The fused losses with the tokens sharded and the rest as users pass it: targets
    replicated, and a ``w`` not on the mesh (a NumPy array, or an array placed without a
    sharding), each against one device."""
    mesh = jax.make_mesh((8,), ("d",), axis_types=(MODES[mode_name][0],))
    hidden, w, y = inputs()[3], build.normal((H, V), 4).__array__(), inputs()[1]
    losses = {
        "linear_cross_entropy": lambda h, w, y: jl.linear_cross_entropy(h, w, y),
        "linear_kl_div": lambda h, w, y: jl.linear_kl_div(h, w, h, w * 0.5, targets=y),
    }
    unplaced = jax.device_put(w)  # on the default device, uncommitted
    for name, fn in losses.items():
        step = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))
        expected = reference(f"unplaced {name}", lambda: step(hidden, w, y))
        with in_mode(mesh, mode_name):
            tokens = jax.device_put(hidden, NamedSharding(mesh, P("d", None)))
            replicated = jax.device_put(y, NamedSharding(mesh, P()))
            sharded_y = jax.device_put(y, NamedSharding(mesh, P("d")))
            for layout, args in {
                "targets replicated": (tokens, jax.device_put(w, NamedSharding(mesh, P())),
                                       replicated),
                "w a NumPy array": (tokens, w, sharded_y),
                "w placed without a sharding": (tokens, unplaced, sharded_y),
            }.items():  # fmt: skip
                value, grad = step(*args)
                report(mode_name, layout, name, value, grad, *expected, "")


def other_meshes(mode_name: str) -> None:
    """The fused losses with no mesh set, on devices other than all eight in order: the
    arrays on one device, FSDP on a mesh of four, and a 2 x 4 mesh of the devices in
    another order (the constraint that gathers an FSDP w names no mesh)."""
    assert mode_name == "auto"
    hidden, w, y = inputs()[3], inputs()[4], inputs()[1]
    losses = {
        "linear_cross_entropy": lambda h, w, y: jl.linear_cross_entropy(h, w, y, chunk_size=16),
        "linear_kl_div": lambda h, w, y: jl.linear_kl_div(h, w, h, w * 0.5, targets=y),
    }
    four = jax.sharding.Mesh(np.array(jax.devices()[4:]), ("d",))
    shuffled = np.array(jax.devices())[[3, 1, 7, 5, 0, 2, 6, 4]].reshape(2, 4)
    two = jax.sharding.Mesh(shuffled, ("d", "v"))
    one = jax.sharding.SingleDeviceSharding(jax.devices()[3])
    layouts = {
        "one device of eight": (one, one, one),
        "fsdp on four devices": (
            NamedSharding(four, P("d", None)), NamedSharding(four, P("d", None)),
            NamedSharding(four, P("d")),
        ),
        "fsdp over a shuffled 2 x 4 mesh": (
            NamedSharding(two, P(("d", "v"), None)), NamedSharding(two, P(("v", "d"), None)),
            NamedSharding(two, P(("d", "v"))),
        ),
    }  # fmt: skip
    for name, fn in losses.items():
        step = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))
        expected = reference(f"other meshes {name}", lambda: step(hidden, w, y))
        for layout, shardings in layouts.items():
            args = [jax.device_put(a, s) for a, s in zip((hidden, w, y), shardings, strict=True)]
            value, grad = step(*args)
            report(mode_name, layout, name, value, grad, *expected, "")
            # Nothing of the loss's own making enters the results' types.
            meshes = {jax.typeof(a).sharding.mesh for a in (value, *grad, *args)}
            print(json.dumps({"layout": layout, "case": name, "meshes": len(meshes)}))


if __name__ == "__main__":
    assert jax.device_count() == 8, jax.devices()
    part, *mode_names = sys.argv[1:]
    if part == "logits":
        communication()
    for mode_name in mode_names:
        parts = {"logits": run_logit_losses, "ctc": ctc_losses, "fused": fused_losses,
                 "unplaced": unplaced_arguments, "meshes": other_meshes}  # fmt: skip
        parts[part](mode_name)
