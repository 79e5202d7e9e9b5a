"""The fused losses under ``jax.vmap``: every example's value and gradients are those of
the unbatched call, under every nesting of ``vmap`` with ``grad`` and ``jacfwd``, and
the batched loss keeps one chunk of logits at a time (compiled temporary bytes)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxloss as jl
from tests import builders as build

B, N, H, V = 3, 13, 6, 29


def _cross_entropy(reduction, passes):
    def loss(x, w, y):
        out = jl.linear_cross_entropy(
            x, w, y, reduction=reduction, passes=passes, chunk_size=4, vocab_chunk_size=8,
            label_smoothing=0.1, z_loss=0.01, logit_softcap=4.0,
        )  # fmt: skip
        return jnp.sum(out * jnp.arange(1.0, 1.0 + y.size).reshape(y.shape)) if out.ndim else out

    return loss


def _distillation(reduction, passes, teacher):
    def loss(x, w, y):
        # The teacher is a function of the targets here, so that it is batched with them.
        t = jax.nn.one_hot(jnp.maximum(y, 0), H, dtype=x.dtype) + x[..., ::-1]
        teacher_w = jnp.sin(jnp.arange(H * V, dtype=x.dtype).reshape(H, V))
        if teacher == "dense":
            extra, kwargs = (t, teacher_w), {}
        else:
            log_q, ids = jax.lax.top_k(jax.nn.log_softmax(t @ teacher_w), 4)
            extra, kwargs = (), {"teacher_topk": (ids, log_q)}
        out = jl.linear_kl_div(
            x, w, *extra, **kwargs, targets=y, reduction=reduction, passes=passes,
            chunk_size=4, vocab_chunk_size=8, temperature=2.0,
        )  # fmt: skip
        return jnp.sum(out) if out.ndim else out

    return loss


LOSSES = {
    "cross_entropy mean passes=1": _cross_entropy("mean", 1),
    "cross_entropy sum passes=2": _cross_entropy("sum", 2),
    "cross_entropy none": _cross_entropy("none", None),
    "kl dense mean passes=2": _distillation("mean", 2, "dense"),
    "kl top-k sum passes=1": _distillation("sum", 1, "topk"),
    "kl top-k none": _distillation("none", None, "topk"),
}


def _problem(batch=B):
    x, w, _, y = build.linear_problem(n=N, h=H, v=V, batch=batch)
    return x, w, y


def _close(got, want):
    for g, h in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, h, rtol=1e-11, atol=1e-13)


def _each(fn, *args, axes):
    """``fn`` applied to each example in turn (a Python loop: no vmap), stacked."""
    count = next(a.shape[0] for a, axis in zip(args, axes, strict=True) if axis == 0)
    fn = jax.jit(fn)
    outs = [
        fn(*[a[i] if axis == 0 else a for a, axis in zip(args, axes, strict=True)])
        for i in range(count)
    ]
    return jax.tree.map(lambda *a: jnp.stack(a), *outs)


@pytest.mark.exhaustive(quick_cases=1)
@pytest.mark.parametrize("name", LOSSES)
def test_vmap_and_its_nestings_with_grad_equal_a_loop(x64, name):
    loss = LOSSES[name]
    x, w, y = _problem()
    grad = jax.grad(loss, (0, 1))
    axes = (0, None, 0)
    _close(jax.jit(jax.vmap(loss, axes))(x, w, y), _each(loss, x, w, y, axes=axes))
    per_example = _each(grad, x, w, y, axes=axes)
    _close(jax.jit(jax.vmap(grad, axes))(x, w, y), per_example)

    def total(x, w, y):
        return jnp.sum(jax.vmap(loss, axes)(x, w, y) * jnp.arange(1.0, B + 1))

    weighted = (per_example[0] * jnp.arange(1.0, B + 1)[:, None, None],
                jnp.einsum("b,bhv->hv", jnp.arange(1.0, B + 1), per_example[1]))  # fmt: skip
    _close(jax.jit(jax.grad(total, (0, 1)))(x, w, y), weighted)
    nested = jax.jit(jax.vmap(jax.vmap(grad, axes), axes))
    _close(nested(x[:, None], w, y[:, None]), jax.tree.map(lambda a: a[:, None], per_example))


@pytest.mark.exhaustive
@pytest.mark.parametrize(
    "name", ["cross_entropy mean passes=1", "kl top-k sum passes=1", "cross_entropy none"]
)
def test_batched_weights_and_forward_over_reverse(x64, name):
    loss = LOSSES[name]
    x, w, y = _problem()
    ws = jnp.stack([w, -0.5 * w, 2.0 * w])
    _close(jax.jit(jax.vmap(loss, (None, 0, None)))(x[0], ws, y[0]),
           _each(loss, x[0], ws, y[0], axes=(None, 0, None)))  # fmt: skip
    grad_w = jax.grad(loss, 1)
    _close(jax.jit(jax.vmap(grad_w, (None, 0, None)))(x[0], ws, y[0]),
           _each(grad_w, x[0], ws, y[0], axes=(None, 0, None)))  # fmt: skip
    hessian_w = jax.jit(jax.jacfwd(grad_w, 1))(x[0], w, y[0])
    assert hessian_w.shape == (H, V, H, V)
    tangent = build.normal(w.shape, 3, w.dtype)
    _, directional = jax.jvp(lambda w: grad_w(x[0], w, y[0]), (w,), (tangent,))
    np.testing.assert_allclose(jnp.einsum("abcd,cd->ab", hessian_w, tangent), directional,
                               rtol=1e-10, atol=1e-12)  # fmt: skip
    eps = 1e-6
    difference = grad_w(x[0], w + eps * tangent, y[0]) - grad_w(x[0], w - eps * tangent, y[0])
    np.testing.assert_allclose(directional, difference / (2 * eps), rtol=1e-5, atol=1e-7)


def _temp_mib(fn, *shapes):
    compiled = jax.jit(fn).lower(*shapes).compile()
    return compiled.memory_analysis().temp_size_in_bytes / 2**20


@pytest.mark.exhaustive
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_vmap_keeps_one_chunk_of_logits(reduction):
    """N = 2,048, H = 64, V = 16,384: the batched loss's compiled temporaries stay those
    of one example (one 16 MiB chunk of logits and its gradient), not B chunks."""
    n, h, v = 2048, 64, 16384
    w = jax.ShapeDtypeStruct((h, v), jnp.float32)

    def loss(x, w, y):
        return jnp.sum(jl.linear_cross_entropy(x, w, y, reduction=reduction))

    def grad_x(x, w, y):
        return jax.grad(loss)(x, w, y)

    one = [jax.ShapeDtypeStruct((n, h), jnp.float32), w, jax.ShapeDtypeStruct((n,), jnp.int32)]
    forward = _temp_mib(loss, *one)
    backward = _temp_mib(grad_x, *one)
    for batch in (4, 8):
        shapes = [jax.ShapeDtypeStruct((batch, n, h), jnp.float32), w,
                  jax.ShapeDtypeStruct((batch, n), jnp.int32)]  # fmt: skip
        assert _temp_mib(jax.vmap(loss, (0, None, 0)), *shapes) <= 1.05 * forward
        assert _temp_mib(jax.vmap(grad_x, (0, None, 0)), *shapes) <= 1.1 * backward
        if reduction == "none":
            # The weight gradient's vocabulary scan batches (documented): B at once.
            grad_w = _temp_mib(jax.vmap(jax.grad(loss, 1), (0, None, 0)), *shapes)
            assert grad_w > batch / 2 * _temp_mib(jax.grad(loss, 1), *one)
