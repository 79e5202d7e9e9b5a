"""linear_cross_entropy against the unfused cross_entropy(x @ w + b) and the formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxloss as jl
from tests import builders as build


def _naive(x, w, b, y, **kwargs):
    return jl.cross_entropy(x @ w + b, y, **kwargs)


OPTIONS = [
    {},
    {"label_smoothing": 0.1},
    {"weight": "linspace"},
    {"z_loss": 1e-3},
    {"logit_softcap": 2.5},
    {"label_smoothing": 0.2, "weight": "linspace", "z_loss": 1e-2, "logit_softcap": 4.0},
]


def _resolve(options, v, dtype=jnp.float64):
    options = dict(options)
    if options.get("weight") == "linspace":
        options["weight"] = jnp.linspace(0.5, 2.0, v, dtype=dtype)
    return options


# Every option set with every reduction; the chunk sizes (one chunk, exact chunks, a
# padded tail) rotate so that each reduction and each option set meets each of them.
CHUNK_SIZES = [None, 8, 7]
UNFUSED_CASES = [
    (options, reduction, CHUNK_SIZES[(i + j) % 3])
    for i, options in enumerate(OPTIONS)
    for j, reduction in enumerate(["mean", "sum", "none"])
]


@pytest.mark.parametrize("options, reduction, chunk_size", UNFUSED_CASES)
def test_value_and_gradients_equal_unfused(x64, options, reduction, chunk_size):
    x, w, b, y = build.linear_problem()
    kwargs = dict(_resolve(options, w.shape[1]), reduction=reduction)

    def weighted(fn):
        def total(x, w, b):
            out = fn(x, w, b, y, **kwargs)
            return jnp.sum(out * jnp.linspace(1, 2, out.size).reshape(out.shape))

        return total

    fused = weighted(
        lambda *a, **k: jl.linear_cross_entropy(*a[:2], a[3], bias=a[2], chunk_size=chunk_size, **k)
    )
    naive = weighted(_naive)
    value, grads = jax.jit(jax.value_and_grad(fused, argnums=(0, 1, 2)))(x, w, b)
    want_value, want_grads = jax.jit(jax.value_and_grad(naive, argnums=(0, 1, 2)))(x, w, b)
    np.testing.assert_allclose(value, want_value, rtol=1e-10)
    for got, want in zip(grads, want_grads, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_weight_gradient_accumulated_in_vocabulary_slices(x64, monkeypatch, reduction):
    from jaxloss import _linear

    x, w, b, y = build.linear_problem(v=32)
    # 256 bytes per slice of an H = 8 gradient: slices of 8 columns, four per chunk.
    monkeypatch.setattr(_linear, "CHUNK_BYTES", 256)
    assert _linear.vocab_slice_size(32, 8) == 8
    fused = jax.value_and_grad(
        lambda x, w, b: jl.linear_cross_entropy(
            x, w, y, bias=b, reduction=reduction, label_smoothing=0.1, chunk_size=8
        ),
        (0, 1, 2),
    )(x, w, b)
    naive = jax.value_and_grad(
        lambda x, w, b: _naive(x, w, b, y, reduction=reduction, label_smoothing=0.1), (0, 1, 2)
    )(x, w, b)
    jax.tree.map(
        lambda a, c: np.testing.assert_allclose(a, c, rtol=1e-10, atol=1e-12), fused, naive
    )


def test_without_bias_and_with_batch_axes(x64):
    x, w, _, y = build.linear_problem(n=9, batch=3)
    got = jl.linear_cross_entropy(x, w, y, chunk_size=4)
    np.testing.assert_allclose(got, jl.cross_entropy(x @ w, y), rtol=1e-12)
    per = jl.linear_cross_entropy(x, w, y, reduction="none", chunk_size=4)
    assert per.shape == (3, 9)
    np.testing.assert_allclose(per, jl.cross_entropy(x @ w, y, reduction="none"), rtol=1e-12)


def test_all_ignored_gives_zero_and_zero_gradient(x64):
    x, w, b, y = build.linear_problem()
    y = jnp.full_like(y, -100)
    loss, (gx, gw) = jax.value_and_grad(jl.linear_cross_entropy, (0, 1))(x, w, y)
    assert loss == 0.0 and not np.any(np.asarray(gx)) and not np.any(np.asarray(gw))


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_finite_differences(x64, reduction):
    x, w, b, y = build.linear_problem(n=7, h=3, v=6)

    def f(x, w, b):
        return jl.linear_cross_entropy(
            x,
            w,
            y,
            bias=b,
            reduction=reduction,
            chunk_size=3,
            label_smoothing=0.1,
            z_loss=0.01,
            logit_softcap=3.0,
        )

    # jit: one compiled program per derivative, not op-by-op dispatch of each probe.
    check_grads(
        jax.jit(f), (x, w, b), order=2, modes=("fwd", "rev"), eps=1e-4, atol=1e-5, rtol=1e-5
    )


def test_forward_mode_vmap_and_jit(x64):
    x, w, b, y = build.linear_problem(n=11, batch=4)
    loss = lambda x, w, y: jl.linear_cross_entropy(x, w, y, chunk_size=4)  # noqa: E731
    per_batch = jax.jit(jax.vmap(jax.value_and_grad(loss, (0, 1)), in_axes=(0, None, 0)))
    values, (gx, gw) = per_batch(x, w, y)
    unfused = jax.jit(jax.value_and_grad(lambda x, w, y: jl.cross_entropy(x @ w, y), (0, 1)))
    for i in range(4):
        v_i, (gx_i, gw_i) = unfused(x[i], w, y[i])
        np.testing.assert_allclose(values[i], v_i, rtol=1e-12)
        np.testing.assert_allclose(gx[i], gx_i, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(gw[i], gw_i, rtol=1e-10, atol=1e-14)
    tangent = jax.random.normal(jax.random.key(5), w.shape, w.dtype)
    _, fwd = jax.jvp(lambda w: loss(x[0], w, y[0]), (w,), (tangent,))
    np.testing.assert_allclose(fwd, jnp.sum(jax.grad(loss, 1)(x[0], w, y[0]) * tangent), rtol=1e-10)


def test_bfloat16_inputs_accumulate_in_float32():
    x, w, b, y = build.linear_problem(n=64, h=32, v=300, dtype=jnp.float32)
    xb, wb = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
    loss, (gx, gw) = jax.value_and_grad(jl.linear_cross_entropy, (0, 1))(
        xb, wb, y, label_smoothing=0.1, chunk_size=16
    )
    assert loss.dtype == gx.dtype == gw.dtype == jnp.bfloat16
    # Reference: the same bf16 values, everything in float32.
    ref_loss, (ref_gx, ref_gw) = jax.value_and_grad(
        lambda x, w: jl.cross_entropy(x @ w, y, label_smoothing=0.1), (0, 1)
    )(xb.astype(jnp.float32), wb.astype(jnp.float32))
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-2)
    scale_x, scale_w = float(jnp.max(jnp.abs(ref_gx))), float(jnp.max(jnp.abs(ref_gw)))
    np.testing.assert_allclose(gx.astype(jnp.float32), ref_gx, atol=2e-2 * scale_x)
    np.testing.assert_allclose(gw.astype(jnp.float32), ref_gw, atol=2e-2 * scale_w)


def _temp_bytes(fn, *args):
    compiled = jax.jit(jax.value_and_grad(fn, argnums=(0, 1))).lower(*args).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_compiled_temporary_memory_stays_below_the_logits():
    n, h, v, chunk = 2048, 64, 8192, 128
    x = jnp.zeros((n, h), jnp.float32)
    w = jnp.zeros((h, v), jnp.float32)
    y = jnp.zeros((n,), jnp.int32)
    naive = _temp_bytes(lambda x, w: jl.cross_entropy(x @ w, y), x, w)
    fused = _temp_bytes(lambda x, w: jl.linear_cross_entropy(x, w, y, chunk_size=chunk), x, w)
    logits_bytes = n * v * 4
    bound = 6 * chunk * v * 4 + h * v * 4  # a few chunk buffers and one dW accumulator
    assert naive >= logits_bytes
    assert fused <= bound < naive, (fused, bound, naive)


def test_auto_chunk_size_bounds_one_chunk_of_logits():
    from jaxloss._linear import CHUNK_BYTES, auto_chunk_size

    for n, v in [(8192, 65536), (8192, 128256), (100, 50), (3, 1_000_000)]:
        chunk = auto_chunk_size(n, v)
        assert chunk & (chunk - 1) == 0
        assert chunk * v * 4 <= max(CHUNK_BYTES, 8 * v * 4)
        assert chunk <= max(8, 2 ** int(np.ceil(np.log2(n))))


@pytest.mark.parametrize(
    "call, error, pattern",
    [
        (
            lambda x, w, y: jl.linear_cross_entropy(x, w.T, y),
            ValueError,
            r"w must have shape \(H, V\)",
        ),
        (
            lambda x, w, y: jl.linear_cross_entropy(x, w, y.astype(float)),
            TypeError,
            "targets must be integer",
        ),
        (
            lambda x, w, y: jl.linear_cross_entropy(x, w, y[:-1]),
            ValueError,
            "targets must have shape",
        ),
        (
            lambda x, w, y: jl.linear_cross_entropy(x, w, y, bias=jnp.ones(3)),
            ValueError,
            r"bias must have shape",
        ),
        (lambda x, w, y: jl.linear_cross_entropy(x, w, y, chunk_size=0), ValueError, "chunk_size"),
        (
            lambda x, w, y: jl.linear_cross_entropy(x, w, y, weight=jnp.ones(2)),
            ValueError,
            "weight must have shape",
        ),
        (
            lambda x, w, y: jl.linear_cross_entropy(x, w, y, label_smoothing=2.0),
            ValueError,
            "label_smoothing",
        ),
        (
            lambda x, w, y: jl.linear_cross_entropy(x.astype(int), w, y),
            TypeError,
            "x must have a floating dtype",
        ),
    ],
)
def test_bad_input(call, error, pattern):
    x, w, _, y = build.linear_problem(n=5, h=4, v=7, dtype=jnp.float32)
    with pytest.raises(error, match=pattern):
        call(x, w, y)


def test_cross_entropy_z_loss_and_softcap_follow_their_formulas(x64):
    x, w, b, y = build.linear_problem()
    logits = x @ w + b
    keep = y != -100
    lse = jax.scipy.special.logsumexp(logits, axis=-1)
    base = jl.cross_entropy(logits, y, reduction="none")
    z = jl.cross_entropy(logits, y, z_loss=0.01, reduction="none")
    np.testing.assert_allclose(z, base + 0.01 * lse**2 * keep, rtol=1e-12)
    capped = jl.cross_entropy(logits, y, logit_softcap=2.0, reduction="none")
    np.testing.assert_allclose(
        capped, jl.cross_entropy(2.0 * jnp.tanh(logits / 2.0), y, reduction="none"), rtol=1e-12
    )
