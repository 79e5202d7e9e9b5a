"""The token options of cross_entropy, nll_loss and linear_cross_entropy: token_weight,
segment_ids with reduction="sequence_mean", and normalizer (jaxloss/_reduce.py)."""

import functools

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxloss as jl
from tests import builders as build
from tests import reference as ref

B, T, C = 3, 9, 6


def _problem(seed=0, dtype=jnp.float64):
    """Logits [B, T, C], targets with some ignored, token weights with some zeros, and
    packed segment ids: a non-adjacent repeat, padding (0) and a row of padding only."""
    x, y, _ = build.index_problem((B, T, C), axis=-1, seed=seed, ignore_frac=0.15, dtype=dtype)
    rng = np.random.default_rng(seed)
    t = rng.uniform(0.0, 2.0, (B, T))
    t[0, 2] = 0.0
    segments = np.array(
        [
            [1, 1, 1, 2, 2, 1, 0, 0, 0],
            [5, 5, 7, 7, 7, 7, 9, 9, 9],
            [0, 0, 0, 0, 0, 0, 0, 0, 0],
        ]
    )
    return x, y, jnp.asarray(t, dtype), jnp.asarray(segments)


def _share(y, weight=None):
    keep = np.asarray(y) != -100
    w_y = np.ones(y.shape) if weight is None else np.asarray(weight)[np.maximum(y, 0)]
    return np.where(keep, w_y, 0.0)


TOKEN_CASES = [
    ("mean", {"token_weight": True}),
    ("sum", {"token_weight": True}),
    ("none", {"token_weight": True}),
    ("sequence_mean", {}),
    ("sequence_mean", {"segment_ids": True}),
    ("sequence_mean", {"segment_ids": True, "token_weight": True}),
    ("mean", {"segment_ids": True, "normalizer": 11.0}),
    ("sequence_mean", {"segment_ids": True, "normalizer": 4.0}),
    ("mean", {"segment_ids": True}),
]


def _kwargs(options, t, segments):
    out = {}
    if options.get("token_weight"):
        out["token_weight"] = t
    if options.get("segment_ids"):
        out["segment_ids"] = segments
    if "normalizer" in options:
        out["normalizer"] = options["normalizer"]
    return out


@pytest.mark.exhaustive(quick_cases=1)
@pytest.mark.parametrize("reduction,options", TOKEN_CASES)
def test_cross_entropy_and_nll_follow_the_loop_reference(x64, reduction, options):
    x, y, t, segments = _problem()
    weight = jnp.linspace(0.5, 2.0, C)
    kwargs = _kwargs(options, t, segments)
    per = ref.cross_entropy_index(x, y, weight=weight, reduction="none")
    want = ref.reduce_tokens(per, _share(y, weight), reduction, **kwargs)
    got = jl.cross_entropy(x, y, weight=weight, reduction=reduction, **kwargs)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    got = jl.nll_loss(jl.log_softmax(x), y, weight=weight, reduction=reduction, **kwargs)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    # The gradient: autodiff of the naive formula, reduced with each element's factor.
    if reduction == "none":
        scales = np.asarray(t) if "token_weight" in kwargs else np.ones(y.shape)
    else:
        scales = _scales(y, weight, reduction, kwargs)

    def naive(x):
        return jnp.sum(ref.cross_entropy_index(x, y, weight=weight, reduction="none") * scales)

    def ours(x):
        return jnp.sum(jl.cross_entropy(x, y, weight=weight, reduction=reduction, **kwargs))

    np.testing.assert_allclose(jax.grad(ours)(x), jax.grad(naive)(x), rtol=1e-10, atol=1e-14)


def _scales(y, weight, reduction, kwargs):
    """Each element's factor in the reduced loss, by the loop reference (a loss of 1 at
    one element at a time)."""
    share = _share(y, weight)
    out = np.zeros(y.shape)
    for index in np.ndindex(*y.shape):
        unit = np.zeros(y.shape)
        unit[index] = 1.0
        if reduction != "none":
            out[index] = ref.reduce_tokens(unit, share, reduction, **kwargs)
    return out


@pytest.mark.exhaustive
@pytest.mark.parametrize("passes", [1, 2])
@pytest.mark.parametrize("reduction,options", TOKEN_CASES)
def test_linear_cross_entropy_equals_the_unfused_loss(x64, reduction, options, passes):
    x, w, b, y = build.linear_problem(n=T, v=32, batch=B)
    _, _, t, segments = _problem()
    weight = jnp.linspace(0.5, 2.0, 32)
    kwargs = dict(_kwargs(options, t, segments), weight=weight, label_smoothing=0.1)

    def fused(x, w, b):
        out = jl.linear_cross_entropy(
            x, w, y, bias=b, reduction=reduction, chunk_size=7, passes=passes,
            vocab_chunk_size=12, **kwargs,
        )  # fmt: skip
        return jnp.sum(out * t)

    def unfused(x, w, b):
        return jnp.sum(jl.cross_entropy(x @ w + b, y, reduction=reduction, **kwargs) * t)

    want_value, want = jax.jit(jax.value_and_grad(unfused, (0, 1, 2)))(x, w, b)
    np.testing.assert_allclose(jax.jit(fused)(x, w, b), want_value, rtol=1e-12)
    got_value, got = jax.jit(jax.value_and_grad(fused, (0, 1, 2)))(x, w, b)
    np.testing.assert_allclose(got_value, want_value, rtol=1e-12)
    for g, h in zip(got, want, strict=True):
        np.testing.assert_allclose(g, h, rtol=1e-10, atol=1e-13)


@pytest.mark.exhaustive
def test_dropped_tokens_add_nothing_even_from_nan_logits(x64):
    x, y, t, segments = _problem()
    bad = x.at[0, 2].set(jnp.nan).at[0, 7].set(jnp.inf).at[2].set(jnp.nan)  # t=0; padding
    for reduction in ("mean", "sequence_mean", "sum"):
        kwargs = dict(token_weight=t, segment_ids=segments, reduction=reduction)
        value, grad = jax.value_and_grad(jl.cross_entropy)(bad, y, **kwargs)
        np.testing.assert_allclose(value, jl.cross_entropy(x, y, **kwargs), rtol=1e-12)
        assert np.all(np.isfinite(grad))
        assert not np.any(grad[0, 2]) and not np.any(grad[0, 7]) and not np.any(grad[2])
        probs = jax.nn.softmax(x)
        value, grad = jax.value_and_grad(jl.cross_entropy)(bad, probs, **kwargs)
        np.testing.assert_allclose(value, jl.cross_entropy(x, probs, **kwargs), rtol=1e-12)
        assert np.all(np.isfinite(grad)) and not np.any(grad[2])
    xh, w, b, yl = build.linear_problem(n=T, v=32, batch=B)
    xh_bad = xh.at[0, 2].set(jnp.nan).at[2].set(jnp.nan)
    for passes in (1, 2):
        kwargs = dict(token_weight=t, segment_ids=segments, reduction="sequence_mean")
        value, grads = jax.value_and_grad(jl.linear_cross_entropy, (0, 1))(
            xh_bad, w, yl, passes=passes, **kwargs
        )
        np.testing.assert_allclose(value, jl.linear_cross_entropy(xh, w, yl, **kwargs))
        assert all(np.all(np.isfinite(g)) for g in grads)


def test_probability_targets_with_token_options(x64):
    x, _, t, segments = _problem()
    probs = build.probabilities((B, T, C))
    per = ref.cross_entropy_probs(x, probs, reduction="none")
    share = np.ones((B, T))
    for reduction in ("mean", "sequence_mean", "none"):
        kwargs = dict(token_weight=t, segment_ids=segments)
        want = ref.reduce_tokens(per, share, reduction, **kwargs)
        got = jl.cross_entropy(x, probs, reduction=reduction, **kwargs)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def test_pytorch_layout_rows_are_the_leading_axes(x64):
    """With the classes on axis 1, a row is still the targets' last axis."""
    x, y, t, segments = _problem()
    moved = jnp.moveaxis(x, -1, 1)
    kwargs = dict(token_weight=t, segment_ids=segments, reduction="sequence_mean")
    np.testing.assert_allclose(
        jl.cross_entropy(moved, y, axis=1, **kwargs), jl.cross_entropy(x, y, **kwargs), rtol=1e-13
    )


@pytest.mark.exhaustive
@pytest.mark.parametrize("reduction", ["mean", "sequence_mean"])
@pytest.mark.parametrize("passes", [None, 1, 2])
def test_gradient_accumulation_with_a_global_normalizer_is_the_full_batch_gradient(
    x64, reduction, passes
):
    """Summing the gradients of k micro-batches, each normalized by the whole batch's
    token (or sequence) count, gives the full batch's gradient."""
    x, w, b, y = build.linear_problem(n=T, v=32, batch=4 * B)
    segments = jnp.tile(_problem()[3], (4, 1))
    kwargs = dict(segment_ids=segments, reduction=reduction, label_smoothing=0.1)
    if passes is None:  # cross_entropy, on the logits

        def loss(x, w, y, **kw):
            return jl.cross_entropy(x @ w + b, y, **kw)
    else:
        loss = functools.partial(jl.linear_cross_entropy, bias=b, passes=passes, chunk_size=8)
    full_value, full_grads = jax.value_and_grad(loss, (0, 1))(x, w, y, **kwargs)
    if reduction == "mean":
        normalizer = jnp.sum((y != -100) & (segments != 0))
    else:
        normalizer = sum(len(set(row.tolist()) - {0}) for row in np.asarray(segments))
    step = jax.jit(jax.value_and_grad(loss, (0, 1)), static_argnames=("reduction",))
    total, sums = 0.0, None
    for part in np.split(np.arange(4 * B), 4):
        micro = dict(kwargs, segment_ids=segments[part], normalizer=normalizer)
        value, grads = step(x[part], w, y[part], **micro)
        total = total + value
        grads = (jnp.zeros_like(x).at[part].set(grads[0]), grads[1])
        sums = grads if sums is None else jax.tree.map(jnp.add, sums, grads)
    np.testing.assert_allclose(total, full_value, rtol=1e-12)
    for g, h in zip(sums, full_grads, strict=True):
        np.testing.assert_allclose(g, h, rtol=1e-10, atol=1e-14)


def test_a_traced_normalizer_does_not_retrace(x64):
    x, y, _, _ = _problem()
    traces = []

    @jax.jit
    def step(x, normalizer):
        traces.append(1)
        return jl.cross_entropy(x, y, normalizer=normalizer)

    for n in (3.0, 5.0):
        np.testing.assert_allclose(
            step(x, n), jl.cross_entropy(x, y, reduction="sum") / n, rtol=1e-13
        )
    assert len(traces) == 1


@pytest.mark.exhaustive
def test_forward_mode_vmap_and_bfloat16(x64):
    x, y, t, segments = _problem()
    kwargs = dict(token_weight=t, segment_ids=segments, reduction="sequence_mean")
    dx = build.logits(x.shape, seed=5)
    _, tangent = jax.jvp(lambda x: jl.cross_entropy(x, y, **kwargs), (x,), (dx,))
    np.testing.assert_allclose(
        tangent, jnp.sum(jax.grad(jl.cross_entropy)(x, y, **kwargs) * dx), rtol=1e-12
    )
    batched = jax.vmap(lambda x, y, t, s: jl.cross_entropy(x, y, token_weight=t, segment_ids=s))
    np.testing.assert_allclose(
        batched(x, y, t, segments),
        [
            jl.cross_entropy(x[i], y[i], token_weight=t[i], segment_ids=segments[i])
            for i in range(B)
        ],
        rtol=1e-13,
    )
    low = jl.cross_entropy(x.astype(jnp.bfloat16), y, **kwargs)
    assert low.dtype == jnp.bfloat16
    want = jl.cross_entropy(x.astype(jnp.bfloat16).astype(jnp.float32), y, **kwargs)
    np.testing.assert_allclose(float(low), float(want), rtol=1e-2)


def test_token_weight_carries_no_gradient(x64):
    x, y, t, _ = _problem()
    grad = jax.grad(lambda t: jl.cross_entropy(x, y, token_weight=t))(t)
    assert not np.any(grad)


@pytest.mark.exhaustive
@settings(max_examples=40, deadline=None)
@given(
    segments=hnp.arrays(np.int64, hnp.array_shapes(min_dims=1, max_dims=3, max_side=6),
                        elements=st.integers(-3, 3)),
    seed=st.integers(0, 2**16),
)  # fmt: skip
def test_sequence_mean_property(segments, seed):
    """Any shape and any integer ids (negative, repeated, non-adjacent): the loop reference."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(*segments.shape, 4)) * 3
        y = rng.integers(-1, 4, segments.shape)
        t = rng.uniform(0, 1, segments.shape) * (rng.uniform(size=segments.shape) > 0.2)
        kwargs = dict(token_weight=t, segment_ids=segments, ignore_index=-1)
        per = ref.cross_entropy_index(
            jnp.asarray(x), jnp.asarray(y), ignore_index=-1, reduction="none"
        )
        share = np.where(y != -1, 1.0, 0.0)
        for reduction in ("sequence_mean", "mean"):
            want = ref.reduce_tokens(
                per, share, reduction, **{k: v for k, v in kwargs.items() if k != "ignore_index"}
            )
            got = jl.cross_entropy(x, y, reduction=reduction, **kwargs)
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def test_errors_name_their_argument():
    x, y = jnp.zeros((2, 3, 4)), jnp.zeros((2, 3), jnp.int32)
    with pytest.raises(ValueError, match="token_weight must have the targets' shape"):
        jl.cross_entropy(x, y, token_weight=jnp.ones(3))
    with pytest.raises(ValueError, match="token_weight must be finite and non-negative"):
        jl.cross_entropy(x, y, token_weight=-jnp.ones((2, 3)))
    with pytest.raises(TypeError, match="token_weight must be real"):
        jl.nll_loss(x, y, token_weight=jnp.ones((2, 3), bool))
    with pytest.raises(TypeError, match="segment_ids must be integers"):
        jl.cross_entropy(x, y, segment_ids=jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="segment_ids must have the targets' shape"):
        jl.linear_cross_entropy(x, jnp.ones((4, 5)), y, segment_ids=jnp.ones((3,), int))
    with pytest.raises(ValueError, match="normalizer replaces the denominator"):
        jl.cross_entropy(x, y, reduction="sum", normalizer=2.0)
    with pytest.raises(ValueError, match="normalizer must be > 0"):
        jl.cross_entropy(x, y, normalizer=0.0)
    with pytest.raises(ValueError, match="normalizer must be a scalar"):
        jl.cross_entropy(x, y, normalizer=jnp.ones(2))
    with pytest.raises(ValueError, match="reduction must be one of"):
        jl.kl_div(x, x, reduction="sequence_mean")


@pytest.mark.exhaustive
def test_linear_forward_mode_vmap_and_bfloat16(x64):
    x, w, b, y = build.linear_problem(n=T, v=32, batch=B)
    _, _, t, segments = _problem()
    kwargs = dict(token_weight=t, segment_ids=segments, reduction="sequence_mean", chunk_size=4)
    for passes in (1, 2):

        def loss(x, w, passes=passes):
            return jl.linear_cross_entropy(x, w, y, passes=passes, **kwargs)

        dx, dw = build.logits(x.shape, seed=7), build.logits(w.shape, seed=8)
        _, tangent = jax.jvp(loss, (x, w), (dx, dw))
        gx, gw = jax.grad(loss, (0, 1))(x, w)
        np.testing.assert_allclose(tangent, jnp.sum(gx * dx) + jnp.sum(gw * dw), rtol=1e-11)
    batched = jax.jit(
        jax.vmap(lambda x, y, t, s: jl.linear_cross_entropy(x, w, y, token_weight=t, segment_ids=s))
    )
    np.testing.assert_allclose(
        batched(x, y, t, segments),
        [
            jl.linear_cross_entropy(x[i], w, y[i], token_weight=t[i], segment_ids=segments[i])
            for i in range(B)
        ],
        rtol=1e-12,
    )
    low = [a.astype(jnp.bfloat16) for a in (x, w)]
    value, grads = jax.value_and_grad(jl.linear_cross_entropy, (0, 1))(*low, y, **kwargs)
    assert value.dtype == jnp.bfloat16 and grads[1].dtype == jnp.bfloat16
    exact = [a.astype(jnp.float64) for a in low]
    want, want_grads = jax.value_and_grad(jl.linear_cross_entropy, (0, 1))(*exact, y, **kwargs)
    np.testing.assert_allclose(float(value), float(want), rtol=1e-2)
    for g, h in zip(grads, want_grads, strict=True):
        np.testing.assert_allclose(
            np.asarray(g, np.float64), h, atol=2e-2 * float(jnp.max(jnp.abs(h)))
        )


def test_extreme_logits_stay_finite_with_token_options(x64):
    x, y, t, segments = _problem()
    for scale in (1e4, -1e4):
        for reduction in ("mean", "sequence_mean", "sum"):
            value, grad = jax.value_and_grad(jl.cross_entropy)(
                x * scale, y, token_weight=t, segment_ids=segments, reduction=reduction
            )
            assert np.isfinite(value) and np.all(np.isfinite(grad))
    xh, w, _, yl = build.linear_problem(n=T, v=32, batch=B)
    value, grads = jax.value_and_grad(jl.linear_cross_entropy, (0, 1))(
        xh * 1e4, w, yl, token_weight=t, segment_ids=segments, reduction="sequence_mean"
    )
    assert np.isfinite(value) and all(np.all(np.isfinite(g)) for g in grads)
