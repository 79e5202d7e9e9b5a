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
# padded tail), the vocabulary slices of the second pass (the whole vocabulary, slices
# that divide V = 32, a narrower last slice) and the number of passes rotate so that each
# reduction and each option set meets each of them.
CHUNK_SIZES = [None, 8, 7]
VOCAB_CHUNK_SIZES = [None, 8, 7]
UNFUSED_CASES = [
    (options, reduction, CHUNK_SIZES[(i + j) % 3], VOCAB_CHUNK_SIZES[(i + 2 * j) % 3], passes)
    for i, options in enumerate(OPTIONS)
    for j, reduction in enumerate(["mean", "sum", "none"])
    for passes in ([1, 2] if reduction != "none" else [None])
]


@pytest.mark.exhaustive(quick_cases=2)
@pytest.mark.parametrize("options, reduction, chunk_size, vocab_chunk_size, passes", UNFUSED_CASES)
def test_value_and_gradients_equal_unfused(
    x64, options, reduction, chunk_size, vocab_chunk_size, passes
):
    x, w, b, y = build.linear_problem(v=32)
    kwargs = dict(_resolve(options, w.shape[1]), reduction=reduction)

    def weighted(fn):
        def total(x, w, b):
            out = fn(x, w, b, y, **kwargs)
            return jnp.sum(out * jnp.linspace(1, 2, out.size).reshape(out.shape))

        return total

    fused = weighted(
        lambda *a, **k: jl.linear_cross_entropy(
            *a[:2],
            a[3],
            bias=a[2],
            chunk_size=chunk_size,
            vocab_chunk_size=vocab_chunk_size,
            passes=passes,
            **k,
        )
    )
    naive = weighted(_naive)
    value, grads = jax.jit(jax.value_and_grad(fused, argnums=(0, 1, 2)))(x, w, b)
    want_value, want_grads = jax.jit(jax.value_and_grad(naive, argnums=(0, 1, 2)))(x, w, b)
    np.testing.assert_allclose(value, want_value, rtol=1e-10)
    for got, want in zip(grads, want_grads, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.exhaustive
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_weight_gradient_accumulated_in_vocabulary_slices(x64, monkeypatch, reduction):
    from jaxloss._fused import engine

    x, w, b, y = build.linear_problem(v=32)
    # 1024 bytes of chunk: slices of a quarter, 256 bytes of an H = 8 gradient, 8 columns.
    monkeypatch.setattr(engine, "CHUNK_BYTES", 1024)
    assert engine.auto_dw_update_size(32, 8) == 8
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


def _slices_against_whole_gradient(monkeypatch, head_class, loss, x, w):
    """``loss``'s value and gradients with one pass forming each chunk's logit gradient
    a vocabulary slice at a time (8 columns: H = 8 and 1024-byte chunks) and, with
    ``head_class.grad_by_slices`` off, whole: the two programs agree (nan included)."""
    from jaxloss._fused import engine

    monkeypatch.setattr(engine, "CHUNK_BYTES", 1024)
    assert engine.auto_dw_update_size(32, 8) == 8
    step = jax.value_and_grad(loss, (0, 1))
    sliced = step(x, w)
    monkeypatch.setattr(head_class, "grad_by_slices", lambda self, params: False)
    jax.clear_caches()  # grad_by_slices is read while tracing
    whole = step(x, w)
    for a, c in zip(jax.tree.leaves(sliced), jax.tree.leaves(whole), strict=True):
        np.testing.assert_allclose(a, c, rtol=1e-12, atol=1e-14, equal_nan=True)
    return sliced


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"label_smoothing": 0.1, "z_loss": 1e-3, "logit_softcap": 4.0, "bias": True},
        {"weight": True, "token_weight": True, "vocab_size": 27},
        {"bad_target": True},
    ],
    ids=["plain", "smoothing_zloss_softcap_bias", "weights_padded_vocab", "out_of_range"],
)
def test_one_pass_gradient_by_vocabulary_slices_equals_the_whole_gradient(
    x64, monkeypatch, options
):
    from jaxloss._linear import CrossEntropyHead

    x, w, b, y = build.linear_problem(n=24, v=32)
    kwargs = dict(options)
    if kwargs.pop("bias", False):
        kwargs["bias"] = b
    if kwargs.pop("weight", False):
        kwargs["weight"] = jnp.linspace(0.5, 1.5, 32)
    if kwargs.pop("token_weight", False):
        kwargs["token_weight"] = jnp.linspace(0.0, 2.0, 24)
    if kwargs.get("vocab_size"):
        y = jnp.where(y >= 27, 3, y)
    if kwargs.pop("bad_target", False):
        y = y.at[5].set(40)

    def loss(x, w):
        return jl.linear_cross_entropy(x, w, y, chunk_size=8, passes=1, **kwargs)

    value, (gx, gw) = _slices_against_whole_gradient(monkeypatch, CrossEntropyHead, loss, x, w)
    if "bad_target" in options:
        assert np.isnan(value) and np.isnan(gx[5]).all() and np.isnan(gw).all()
    else:
        assert np.isfinite(value) and np.isfinite(gw).all() and np.any(gw != 0)


def test_one_pass_top_k_teacher_gradient_by_vocabulary_slices(x64, monkeypatch):
    from jaxloss._distill import DistillationHead

    x, w, _, _ = build.linear_problem(n=24, v=32)
    ids = jnp.asarray(np.random.default_rng(1).integers(0, 32, (24, 3)))
    log_probs = jax.nn.log_softmax(build.normal((24, 3), 2, jnp.float64))

    def loss(x, w):
        return jl.linear_kl_div(
            x, w, teacher_topk=(ids, log_probs), temperature=2.0, chunk_size=8, passes=1
        )

    value, (gx, gw) = _slices_against_whole_gradient(monkeypatch, DistillationHead, loss, x, w)
    assert np.isfinite(value) and np.any(gw != 0)


def test_one_pass_ntxent_gradient_by_vocabulary_slices(x64, monkeypatch):
    from jaxloss._contrastive import NTXentHead

    embeddings = build.normal((32, 8), 3, jnp.float64)
    labels = jnp.arange(32) % 5

    def loss(x, _):
        return jl.ntxent_loss(x, labels, 0.5, chunk_size=8)

    value, (gx, _) = _slices_against_whole_gradient(
        monkeypatch, NTXentHead, loss, embeddings, embeddings
    )
    assert np.isfinite(value) and np.any(gx != 0)


@pytest.mark.exhaustive
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


@pytest.mark.exhaustive
@pytest.mark.parametrize("reduction, passes", [("mean", 1), ("mean", 2), ("none", None)])
def test_finite_differences(x64, reduction, passes):
    """First and second derivatives, forward and reverse, of both paths."""
    x, w, b, y = build.linear_problem(n=7, h=3, v=6)

    def f(x, w, b):
        return jl.linear_cross_entropy(
            x,
            w,
            y,
            bias=b,
            reduction=reduction,
            passes=passes,
            vocab_chunk_size=4,
            chunk_size=3,
            label_smoothing=0.1,
            z_loss=0.01,
            logit_softcap=3.0,
        )

    # jit: one compiled program per derivative, not op-by-op dispatch of each probe.
    check_grads(
        jax.jit(f), (x, w, b), order=2, modes=("fwd", "rev"), eps=1e-4, atol=1e-5, rtol=1e-5
    )


@pytest.mark.exhaustive
@pytest.mark.parametrize("passes", [1, 2])
def test_forward_mode_vmap_and_jit(x64, passes):
    x, w, b, y = build.linear_problem(n=11, batch=4)

    def loss(x, w, y):
        return jl.linear_cross_entropy(x, w, y, chunk_size=4, passes=passes, vocab_chunk_size=8)

    per_batch = jax.jit(jax.vmap(jax.value_and_grad(loss, (0, 1)), in_axes=(0, None, 0)))
    values, (gx, gw) = per_batch(x, w, y)
    unfused = jax.jit(jax.value_and_grad(lambda x, w, y: jl.cross_entropy(x @ w, y), (0, 1)))
    for i in range(4):
        v_i, (gx_i, gw_i) = unfused(x[i], w, y[i])
        np.testing.assert_allclose(values[i], v_i, rtol=1e-12)
        np.testing.assert_allclose(gx[i], gx_i, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(gw[i], gw_i, rtol=1e-10, atol=1e-14)
    tangent = build.normal(w.shape, 5, w.dtype)
    _, fwd = jax.jvp(lambda w: loss(x[0], w, y[0]), (w,), (tangent,))
    np.testing.assert_allclose(fwd, jnp.sum(jax.grad(loss, 1)(x[0], w, y[0]) * tangent), rtol=1e-10)


@pytest.mark.exhaustive
def test_bfloat16_inputs_accumulate_in_float32(x64):
    """bfloat16 operands, float32 sums, both paths: every gradient entry is its float64
    value (from the same bfloat16 inputs) to within a few bfloat16 roundings of the
    magnitudes summed, and two passes are as accurate as one."""
    x, w, b, y = build.linear_problem(n=256, h=32, v=300, dtype=jnp.float32)
    xb, wb = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
    ref_loss, ref_grads = jax.value_and_grad(
        lambda x, w: jl.cross_entropy(x @ w, y, label_smoothing=0.1), (0, 1)
    )(xb.astype(jnp.float64), wb.astype(jnp.float64))
    # dx = G w^T and dw = x^T G are sums of products: their error scales with the sum of
    # the terms' magnitudes, |G| |w|^T and |x|^T |G|.
    logits = xb.astype(jnp.float64) @ wb.astype(jnp.float64)
    g = np.abs(jax.grad(lambda z: jl.cross_entropy(z, y, label_smoothing=0.1))(logits))
    magnitudes = (
        g @ np.abs(np.asarray(wb, np.float64)).T,
        np.abs(np.asarray(xb, np.float64)).T @ g,
    )
    errors = {}
    for passes in (1, 2):
        loss, grads = jax.jit(
            jax.value_and_grad(
                lambda x, w: jl.linear_cross_entropy(
                    x, w, y, label_smoothing=0.1, chunk_size=16, passes=passes, vocab_chunk_size=128
                ),
                (0, 1),
            )
        )(xb, wb)
        assert loss.dtype == grads[0].dtype == grads[1].dtype == jnp.bfloat16
        np.testing.assert_allclose(float(loss), float(ref_loss), rtol=2**-8)
        errors[passes] = []
        for got, want, magnitude in zip(grads, ref_grads, magnitudes, strict=True):
            error = np.abs(np.asarray(got, np.float64) - want)
            assert np.all(error <= 2**-7 * magnitude + 2**-8 * np.abs(want))
            errors[passes].append(float(np.max(error / (magnitude + np.abs(want) + 1e-300))))
    for one, two in zip(errors[1], errors[2], strict=True):
        assert two <= 1.1 * one


@pytest.mark.exhaustive
def test_two_passes_keep_no_vocabulary_wide_float32_buffer():
    """bfloat16 weights: one pass accumulates dw in an H x V float32 buffer (twice dw);
    two passes (the default here) stay a small fraction of it."""
    n, h, v = 256, 512, 16384
    x = jax.ShapeDtypeStruct((n, h), jnp.bfloat16)
    w = jax.ShapeDtypeStruct((h, v), jnp.bfloat16)
    y = jax.ShapeDtypeStruct((n,), jnp.int32)
    gradient_bytes = (n * h + h * v) * 2  # dx and dw

    def temp_bytes(**kwargs):
        step = jax.value_and_grad(
            lambda x, w, y: jl.linear_cross_entropy(
                x, w, y, chunk_size=32, vocab_chunk_size=1024, **kwargs
            ),
            argnums=(0, 1),
        )
        return jax.jit(step).lower(x, w, y).compile().memory_analysis().temp_size_in_bytes

    assert temp_bytes(passes=1) >= h * v * 4
    assert temp_bytes() == temp_bytes(passes=2) < temp_bytes(passes=1) / 1.5
    if jax.__version_info__ >= (0, 10):
        assert temp_bytes(passes=2) < h * v * 4 / 4 < gradient_bytes
    # Older CPU backends (jax 0.8.0) multiply bfloat16 by way of float32, and the first
    # pass then keeps a float32 copy of w: smaller than one pass still, not at the floor.


@pytest.mark.exhaustive
@pytest.mark.parametrize(
    "reduction, passes", [("mean", 1), ("mean", 2), ("sum", 2), ("none", None)]
)
def test_auxiliary_statistics_follow_their_formulas(x64, reduction, passes):
    x, w, b, y = build.linear_problem(v=32)
    # Class 0 has weight 0: without a z-loss its tokens add nothing and are not counted.
    weight = jnp.linspace(0.0, 2.0, 32)
    y = y.at[:3].set(0)
    # Some tokens whose target is the model's top choice.
    y = y.at[5:15].set(jnp.argmax(x @ w + b, axis=-1)[5:15])
    logits = x @ w + b
    lse = jax.scipy.special.logsumexp(logits, axis=-1)
    for z_loss in (0.0, 0.01):
        kwargs = dict(bias=b, weight=weight, z_loss=z_loss, reduction=reduction, chunk_size=8)

        def with_aux(x, w, kwargs=kwargs):
            return jl.linear_cross_entropy(
                x, w, y, passes=passes, vocab_chunk_size=8, return_aux=True, **kwargs
            )

        loss, aux = jax.jit(with_aux)(x, w)
        np.testing.assert_allclose(loss, jl.linear_cross_entropy(x, w, y, **kwargs), rtol=1e-12)
        assert set(aux) == {"z_loss", "log_partition", "accuracy", "target_log_prob", "entropy"}
        counted = y != -100
        if z_loss == 0:
            counted = counted & (weight[jnp.maximum(y, 0)] != 0)
        want = {
            "z_loss": z_loss * lse**2,
            "log_partition": lse,
            "accuracy": (jnp.argmax(logits, axis=-1) == y).astype(lse.dtype),
            "target_log_prob": jnp.take_along_axis(
                jax.nn.log_softmax(logits), jnp.maximum(y, 0)[:, None], axis=-1
            )[:, 0],
            "entropy": -jnp.sum(jax.nn.softmax(logits) * jax.nn.log_softmax(logits), axis=-1),
        }
        assert 0 < float(jnp.mean(want["accuracy"][counted])) < 1
        for name, per_token in want.items():
            per_token = jnp.where(counted, per_token, 0.0)
            if reduction != "none":
                per_token = jnp.sum(per_token) / jnp.sum(counted)
            np.testing.assert_allclose(aux[name], per_token, rtol=1e-12, err_msg=name)
            assert aux[name].dtype == jnp.float64
        # The statistics are for logging: they carry no gradient.
        grads = jax.jit(
            jax.grad(lambda x, w, f=with_aux: sum(jnp.sum(a) for a in f(x, w)[1].values()), (0, 1))
        )
        assert not any(np.any(np.asarray(g)) for g in grads(x, w))


@pytest.mark.exhaustive
def test_auxiliary_statistics_are_nan_with_a_target_out_of_range(x64):
    x, w, b, y = build.linear_problem(v=32)
    for passes in (1, 2):
        loss, aux = jl.linear_cross_entropy(x, w, y.at[0].set(32), passes=passes, return_aux=True)
        assert np.isnan(loss) and all(np.isnan(a) for a in aux.values())
    _, aux = jl.linear_cross_entropy(x, w, jnp.full_like(y, -100), return_aux=True)
    assert all(a == 0 for a in aux.values())


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


@pytest.mark.parametrize("chunk_size", [None, 128, 64])
def test_one_pass_float32_temporaries_are_two_chunks_of_logits(chunk_size):
    """docs/benchmarks.md: the default on one device in float32 keeps two chunk x V
    float32 buffers (the logits and a by-product of their row sums) and little else, so halving
    chunk_size halves its temporaries."""
    from jaxloss._fused.engine import auto_chunk_size

    n, h, v = 1024, 64, 16384
    dims = [((n, h), jnp.float32), ((h, v), jnp.float32), ((n,), jnp.int32)]
    shapes = [jax.ShapeDtypeStruct(s, d) for s, d in dims]
    temps = _temp_bytes(
        lambda x, w, y: jl.linear_cross_entropy(x, w, y, chunk_size=chunk_size), *shapes
    )
    chunk = chunk_size or auto_chunk_size(n, v)
    assert chunk_size or chunk == 256
    # "Little else": at most sixteen float32 rows of the hidden size per token of the
    # chunk (jax 0.10 needs four, jax 0.8 about nine), a 1/16 of one logit row here.
    assert 2 * chunk * v * 4 <= temps <= 2 * chunk * v * 4 + 16 * h * chunk * 4, temps


def test_one_pass_by_vocabulary_slices_temporaries_are_two_chunks_of_logits():
    """docs/large-vocab.md: where one pass forms the logit gradient a vocabulary slice at
    a time (here V = 32768 > dw_update_size), its temporaries are the chunk's logits and
    one by-product of their row sums, and a little more; on jax 0.8, one chunk more."""
    from jaxloss._fused.engine import auto_chunk_size, auto_dw_update_size

    n, h, v = 1024, 64, 32768
    dims = [((n, h), jnp.float32), ((h, v), jnp.float32), ((n,), jnp.int32)]
    temps = _temp_bytes(jl.linear_cross_entropy, *[jax.ShapeDtypeStruct(s, d) for s, d in dims])
    chunk_bytes = auto_chunk_size(n, v) * v * 4
    assert auto_dw_update_size(v, h) < v
    major, minor = (int(p) for p in jax.__version__.split(".")[:2])
    chunks = 2 if (major, minor) >= (0, 9) else 3
    assert chunks * chunk_bytes <= temps <= chunks * chunk_bytes + chunk_bytes // 16, temps


def test_auto_chunk_size_bounds_one_chunk_of_logits():
    from jaxloss._fused.engine import CHUNK_BYTES, auto_chunk_size

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
            lambda x, w, y: jl.linear_cross_entropy(x, w, y, vocab_chunk_size=1.5),
            ValueError,
            "vocab_chunk_size must be a positive int",
        ),
        (lambda x, w, y: jl.linear_cross_entropy(x, w, y, passes=3), ValueError, "passes"),
        (lambda x, w, y: jl.linear_cross_entropy(x, w, y, passes=True), ValueError, "passes"),
        (
            lambda x, w, y: jl.linear_cross_entropy(x, w, y, return_aux=1),
            TypeError,
            "return_aux must be a bool",
        ),
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


@pytest.mark.exhaustive
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


@pytest.mark.exhaustive
def test_a_target_on_a_minus_inf_bias_column_costs_inf():
    """As cross_entropy: target mass on a column of probability 0 is an infinite loss
    (never the largest finite float); a column without mass adds nothing."""
    x, w = jnp.eye(3, 4), jnp.eye(4, 5)
    bias = jnp.array([0.0, -jnp.inf, 0.0, 0.0, 0.0])
    y = jnp.array([1, 0, 2])
    unfused = jl.cross_entropy(x @ w + bias, y, reduction="none")
    assert unfused[0] == np.inf and np.all(np.isfinite(unfused[1:]))
    per_token = jl.linear_cross_entropy(x, w, y, bias=bias, reduction="none")
    np.testing.assert_array_equal(per_token, unfused)
    for passes in (1, 2):
        total = jl.linear_cross_entropy(x, w, y, bias=bias, reduction="sum", passes=passes)
        assert total == np.inf
        total, _ = jax.value_and_grad(  # the value that the gradient pass forms
            lambda x, passes=passes: jl.linear_cross_entropy(
                x, w, y, bias=bias, reduction="sum", passes=passes
            )
        )(x)
        assert total == np.inf
        rest = jl.linear_cross_entropy(x[1:], w, y[1:], bias=bias, passes=passes)
        np.testing.assert_allclose(rest, jnp.mean(unfused[1:]), rtol=1e-6)
