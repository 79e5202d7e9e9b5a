"""Gradients: hand-derived formulas, autodiff of naive references, finite differences."""

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxloss as jl
from tests import builders as build
from tests import reference as ref

RTOL = 1e-10


def _compiled_grad(fn, argnums=0):
    """``jax.grad`` compiled whole: op-by-op dispatch of a naive reference costs more."""
    return jax.jit(jax.grad(fn, argnums))


def _close(a, b, rtol=RTOL, atol=1e-12):
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=rtol, atol=atol), a, b)


# --- against the closed form, written here independently of the library ---


@pytest.mark.parametrize("eps", [0.0, 0.15])
@pytest.mark.parametrize("use_weight", [False, True])
def test_cross_entropy_gradient_is_weighted_softmax_minus_smoothed_target(x64, eps, use_weight):
    n, c = 6, 5
    x = build.logits((n, c))
    y = jnp.array([0, 4, -100, 2, 2, 1])
    w = jnp.array([0.5, 1.0, 2.0, 1.5, 0.7]) if use_weight else jnp.ones(c)
    keep = (y != -100)[:, None]
    safe = jnp.where(y == -100, 0, y)
    onehot = jax.nn.one_hot(safe, c, dtype=jnp.float64)
    a = keep * ((1 - eps) * w[safe][:, None] * onehot + eps / c * w)
    p = jax.nn.softmax(x)
    denominator = jnp.sum(keep[:, 0] * w[safe])
    expected = (a.sum(-1, keepdims=True) * p - a) / denominator
    got = jax.grad(jl.cross_entropy)(x, y, weight=w if use_weight else None, label_smoothing=eps)
    _close(got, expected)


@pytest.mark.exhaustive
def test_cross_entropy_hessian_is_diag_p_minus_outer_over_n(x64):
    n, c = 3, 4
    x = build.logits((n, c))
    y = jnp.array([1, 3, 0])
    hess = jax.hessian(jl.cross_entropy)(x, y)
    p = jax.nn.softmax(x)
    for i in range(n):
        block = (jnp.diag(p[i]) - jnp.outer(p[i], p[i])) / n
        _close(hess[i, :, i, :], block)
        for j in range(n):
            if j != i:
                assert np.all(np.asarray(hess[i, :, j, :]) == 0.0)


# --- against jax.grad of the naive references ---


@pytest.mark.exhaustive(quick_cases=1)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_all_gradients_match_naive_autodiff(x64, reduction):
    x = build.logits((5, 4))
    y = jnp.array([3, -100, 0, 1, 1])
    w = jnp.array([0.3, 1.2, 2.0, 0.8])
    t = build.probabilities((5, 4))

    def ours_index(x, w, eps):
        out = jl.cross_entropy(x, y, weight=w, label_smoothing=eps, reduction=reduction)
        return jnp.sum(out * jnp.arange(1, out.size + 1).reshape(out.shape))

    def naive_index(x, w, eps):
        out = ref.cross_entropy_index(x, y, w, reduction=reduction, eps=eps)
        return jnp.sum(out * jnp.arange(1, out.size + 1).reshape(out.shape))

    args = (x, w, 0.2)
    _close(
        _compiled_grad(ours_index, (0, 1, 2))(*args), _compiled_grad(naive_index, (0, 1, 2))(*args)
    )

    def ours_probs(x, t, w, eps):
        out = jl.cross_entropy(x, t, weight=w, label_smoothing=eps, reduction=reduction)
        return jnp.sum(out * jnp.arange(1, out.size + 1).reshape(out.shape))

    def naive_probs(x, t, w, eps):
        out = ref.cross_entropy_probs(x, t, w, reduction=reduction, eps=eps)
        return jnp.sum(out * jnp.arange(1, out.size + 1).reshape(out.shape))

    args = (x, t, w, 0.2)
    _close(
        _compiled_grad(ours_probs, (0, 1, 2, 3))(*args),
        _compiled_grad(naive_probs, (0, 1, 2, 3))(*args),
    )


def test_other_losses_gradients_match_naive_autodiff(x64):
    x = build.logits((4, 3), scale=3.0)
    t = build.uniform((4, 3), 7, jnp.float64)
    w = build.uniform((4, 3), 8, jnp.float64) + 0.5
    pw = jnp.array([0.5, 2.0, 1.5])
    _close(
        _compiled_grad(
            lambda *a: jl.binary_cross_entropy_with_logits(*a[:2], weight=a[2], pos_weight=a[3]),
            (0, 1, 2, 3),
        )(x, t, w, pw),
        _compiled_grad(ref.bce_with_logits, (0, 1, 2, 3))(x, t, w, pw),
    )
    p = jax.nn.sigmoid(x)
    _close(
        _compiled_grad(lambda p, t, w: jl.binary_cross_entropy(p, t, weight=w), (0, 1, 2))(p, t, w),
        _compiled_grad(ref.bce, (0, 1, 2))(p, t, w),
    )
    y = jnp.array([2, 0, -100, 1])
    lp = jl.log_softmax(x)
    wc = jnp.array([1.0, 0.5, 2.0])
    _close(
        _compiled_grad(lambda lp, w: jl.nll_loss(lp, y, weight=w), (0, 1))(lp, wc),
        _compiled_grad(lambda lp, w: ref.nll_loss(lp, y, w), (0, 1))(lp, wc),
    )
    q = build.probabilities((4, 3))
    for log_target, reduction in [(False, "batchmean"), (True, "mean")]:
        target = jnp.log(q) if log_target else q
        _close(
            _compiled_grad(
                lambda a, b: jl.kl_div(a, b, reduction=reduction, log_target=log_target), (0, 1)
            )(lp, target),
            _compiled_grad(lambda a, b: ref.kl_div(a, b, reduction, log_target), (0, 1))(
                lp, target
            ),
        )
    _close(
        _compiled_grad(lambda x: jnp.sum(jl.log_softmax(x) * q))(x),
        _compiled_grad(lambda x: jnp.sum(ref.log_softmax(x) * q))(x),
    )
    _close(
        _compiled_grad(lambda x: jnp.sum(jl.softmax(x, axis=0) * q))(x),
        _compiled_grad(lambda x: jnp.sum(jax.nn.softmax(x, axis=0) * q))(x),
    )


# --- finite differences, orders 1 and 2, forward and reverse mode ---


def _fd_cases():
    x = build.logits((3, 4), seed=11)
    y = jnp.array([1, -100, 3])
    t = build.probabilities((3, 4), seed=12)
    w = jnp.array([0.5, 1.0, 1.5, 2.0])
    u = build.uniform((3, 4), 13, jnp.float64, 0.05, 0.95)
    lp = jl.log_softmax(x)
    # KL's second derivative in t is 1/t: keep t away from 0 so central differences are accurate.
    t_flat = jax.nn.softmax(0.3 * build.normal((3, 4), 14, jnp.float64))
    return {
        "log_softmax": (lambda x: jl.log_softmax(x, axis=0), (x,)),
        "softmax": (lambda x: jl.softmax(x), (x,)),
        "log_sigmoid": (jl.log_sigmoid, (x,)),
        "cross_entropy_index": (
            lambda x, w, e: jl.cross_entropy(x, y, weight=w, label_smoothing=e, z_loss=0.1),
            (x, w, 0.1),
        ),
        "cross_entropy_probs": (
            lambda x, t, w, e: jl.cross_entropy(
                x, t, weight=w, label_smoothing=e, reduction="none"
            ),
            (x, t, w, 0.1),
        ),
        "cross_entropy_softcap": (lambda x: jl.cross_entropy(x, y, logit_softcap=2.0), (x,)),
        "nll_loss": (lambda lp, w: jl.nll_loss(lp, y, weight=w), (lp, w)),
        "bce_with_logits": (
            lambda x, t, w: jl.binary_cross_entropy_with_logits(x, t, weight=w, pos_weight=w[0]),
            (x, u, u),
        ),
        "bce": (lambda p, t, w: jl.binary_cross_entropy(p, t, weight=w), (u, t, u)),
        "kl_div": (lambda a, b: jl.kl_div(a, b), (lp, t_flat)),
        "kl_div_log_target": (lambda a, b: jl.kl_div(a, b, log_target=True), (lp, jnp.log(t_flat))),
    }


@pytest.mark.exhaustive(quick_cases=1)
@pytest.mark.parametrize(
    "name",
    [
        "log_softmax",
        "softmax",
        "log_sigmoid",
        "cross_entropy_index",
        "cross_entropy_probs",
        "cross_entropy_softcap",
        "nll_loss",
        "bce_with_logits",
        "bce",
        "kl_div",
        "kl_div_log_target",
    ],
)
def test_check_grads_orders_1_and_2(x64, name):
    fn, args = _fd_cases()[name]
    # jit: one compiled program per derivative, not op-by-op dispatch of each probe.
    check_grads(jax.jit(fn), args, order=2, modes=("fwd", "rev"), eps=1e-4, atol=1e-5, rtol=1e-5)


# --- every JAX transform goes through the custom rules ---


@pytest.mark.exhaustive
def test_forward_mode_vmap_checkpoint_and_scan(x64):
    x = build.logits((4, 6, 5))
    y = build.integers((4, 6), 2, 0, 5)
    loss = lambda x, y: jl.cross_entropy(x, y, label_smoothing=0.1)  # noqa: E731
    grads = jax.vmap(jax.grad(loss))(x, y)
    for i in range(4):
        _close(grads[i], jax.grad(loss)(x[i], y[i]))
    _close(jax.jacfwd(loss)(x[0], y[0]), grads[0])
    _close(jax.grad(jax.checkpoint(loss))(x[0], y[0]), grads[0])

    def body(carry, xy):
        return carry + loss(*xy), None

    scanned = jax.grad(lambda x: jax.lax.scan(body, 0.0, (x, y))[0])(x)
    _close(scanned, grads)


# --- property tests over random shapes, axes and options ---


@pytest.mark.exhaustive
@hypothesis.settings(max_examples=12, deadline=None, derandomize=True)
@hypothesis.given(
    batch=st.lists(st.integers(1, 3), min_size=0, max_size=2),
    num_classes=st.integers(2, 6),
    axis_pos=st.integers(0, 2),
    eps=st.sampled_from([0.0, 0.1, 0.5]),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    use_weight=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_property_cross_entropy_matches_naive_value_and_gradient(
    batch, num_classes, axis_pos, eps, reduction, use_weight, seed
):
    with jax.enable_x64(True):
        axis = min(axis_pos, len(batch))
        shape = tuple(batch[:axis]) + (num_classes,) + tuple(batch[axis:])
        x = build.logits(shape, seed)
        index_shape = tuple(batch)
        y = build.integers(index_shape, seed + 1, -1, num_classes)
        y = jnp.where(y < 0, -100, y)
        # Keep one target: the all-ignored mean is a documented deviation, tested elsewhere.
        y = y.at[(0,) * y.ndim].set(num_classes - 1)
        w = jnp.linspace(0.5, 1.5, num_classes) if use_weight else None

        def ours(x):
            out = jl.cross_entropy(
                x, y, weight=w, label_smoothing=eps, reduction=reduction, axis=axis
            )
            return jnp.sum(jnp.sin(out))

        def naive(x):
            out = ref.cross_entropy_index(
                jnp.moveaxis(x, axis, -1), y, w, reduction=reduction, eps=eps
            )
            return jnp.sum(jnp.sin(out))

        # One compiled program per side rather than op-by-op dispatch of each new shape.
        _close(*jax.jit(lambda x: (ours(x), naive(x)))(x))
        _close(*jax.jit(lambda x: (jax.grad(ours)(x), jax.grad(naive)(x)))(x))
