"""``vocab_size``: a vocabulary padded to a multiple of the device count (GPT-2's 50,257
as 50,304) gives the loss of the unpadded one, and its padded columns exactly zero
probability and zero gradient, in cross_entropy, linear_cross_entropy and linear_kl_div."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxloss as jl
from tests import builders as build

REAL, PAD = 29, 32

OPTIONS = [
    {},
    {"label_smoothing": 0.1},
    {"label_smoothing": 0.2, "weight": True, "z_loss": 1e-2, "logit_softcap": 4.0},
]


def _options(options, vocab):
    options = dict(options)
    if options.pop("weight", False):
        options["weight"] = jnp.linspace(0.5, 2.0, vocab, dtype=jnp.float64)
    return options


def _padded_weight(options):
    """The class weights of the padded vocabulary: the real ones, then anything."""
    if "weight" not in options:
        return options
    extra = jnp.full((PAD - REAL,), 7.0, jnp.float64)
    return {**options, "weight": jnp.concatenate([options["weight"], extra])}


def _pad_columns(a, seed):
    """``a`` with ``PAD - REAL`` columns of large random values appended."""
    extra = 50.0 * build.normal((*a.shape[:-1], PAD - REAL), seed, a.dtype)
    return jnp.concatenate([a, extra], axis=-1)


def _check(got, want, grads, want_grads, padded_grad_axes):
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    for name, axis in padded_grad_axes.items():
        real = jnp.take(grads[name], jnp.arange(REAL), axis=axis)
        np.testing.assert_allclose(real, want_grads[name], rtol=1e-9, atol=1e-12)
        padding = jnp.take(grads[name], jnp.arange(REAL, PAD), axis=axis)
        assert jnp.all(padding == 0), name
    for name in set(grads) - set(padded_grad_axes):
        np.testing.assert_allclose(grads[name], want_grads[name], rtol=1e-9, atol=1e-12)


@pytest.mark.exhaustive(quick_cases=1)
@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_cross_entropy(x64, options, reduction):
    x, y, _ = build.index_problem((12, REAL), -1)
    options = _options(options, REAL)

    def loss(x, vocab_size=None, options=options):
        out = jl.cross_entropy(x, y, reduction=reduction, vocab_size=vocab_size, **options)
        return jnp.sum(out)

    want, want_grad = jax.value_and_grad(loss)(x)
    padded = _pad_columns(x, 1)
    got, grad = jax.value_and_grad(loss)(padded, REAL, _padded_weight(options))
    _check(got, want, {"x": grad}, {"x": want_grad}, {"x": -1})
    # Padded logits may hold anything, nan included: they are never read.
    nan_padded = padded.at[:, REAL:].set(jnp.nan)
    got, grad = jax.value_and_grad(loss)(nan_padded, REAL, _padded_weight(options))
    _check(got, want, {"x": grad}, {"x": want_grad}, {"x": -1})


@pytest.mark.exhaustive
def test_cross_entropy_class_axis_and_probability_targets(x64):
    x, y, _ = build.index_problem((4, REAL, 3), 1)
    padded = jnp.moveaxis(_pad_columns(jnp.moveaxis(x, 1, -1), 2), -1, 1)
    want = jl.cross_entropy(x, y, axis=1, label_smoothing=0.1)
    got = jl.cross_entropy(padded, y, axis=1, label_smoothing=0.1, vocab_size=REAL)
    np.testing.assert_allclose(got, want, rtol=1e-10)
    t = build.probabilities((6, REAL))
    x2 = build.logits((6, REAL))
    t_padded = jnp.concatenate([t, jnp.zeros((6, PAD - REAL))], axis=-1)
    want = jl.cross_entropy(x2, t, label_smoothing=0.1)
    got = jl.cross_entropy(_pad_columns(x2, 3), t_padded, label_smoothing=0.1, vocab_size=REAL)
    np.testing.assert_allclose(got, want, rtol=1e-10)


@pytest.mark.exhaustive
@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("passes", [1, 2])
def test_linear_cross_entropy(x64, options, passes):
    x, w, b, y = build.linear_problem(v=REAL)
    options = _options(options, REAL)
    kwargs = {"chunk_size": 8, "vocab_chunk_size": 8, "passes": passes}

    def loss(x, w, b, vocab_size=None, options=options):
        return jl.linear_cross_entropy(
            x, w, y, bias=b, vocab_size=vocab_size, return_aux=True, **kwargs, **options
        )

    (want, want_aux), want_grads = jax.value_and_grad(loss, (0, 1, 2), has_aux=True)(x, w, b)
    w_pad, b_pad = _pad_columns(w, 4), _pad_columns(b, 5)
    (got, aux), grads = jax.value_and_grad(loss, (0, 1, 2), has_aux=True)(
        x, w_pad, b_pad, REAL, _padded_weight(options)
    )
    names = ("x", "w", "b")
    _check(
        got,
        want,
        dict(zip(names, grads, strict=True)),
        dict(zip(names, want_grads, strict=True)),
        {"w": 1, "b": 0},
    )
    for key, value in want_aux.items():
        np.testing.assert_allclose(aux[key], value, rtol=1e-9, atol=1e-12, err_msg=key)


@pytest.mark.exhaustive
@pytest.mark.parametrize("teacher", ["dense", "topk"])
@pytest.mark.parametrize("passes", [1, 2])
def test_linear_kl_div(x64, teacher, passes):
    x, w, _, y = build.linear_problem(v=REAL)
    if teacher == "dense":
        teacher_w = build.logits((8, REAL), seed=6) / 3
        args = (x[::-1], teacher_w)
        padded_args = (x[::-1], _pad_columns(teacher_w, 7))
        kwargs = {}
    else:
        ids = (jnp.arange(x.shape[0])[:, None] * 5 + jnp.arange(3)) % REAL
        kwargs = {"teacher_topk": (ids, -jnp.arange(3.0) * jnp.ones((x.shape[0], 1)))}
        args = padded_args = ()

    def loss(x, w, *teacher, vocab_size=None):
        return jl.linear_kl_div(
            x, w, *teacher, targets=y, temperature=2.0, chunk_size=8, passes=passes,
            vocab_chunk_size=8, vocab_size=vocab_size, **kwargs,
        )  # fmt: skip

    want, want_grads = jax.value_and_grad(loss, (0, 1))(x, w, *args)
    got, grads = jax.value_and_grad(loss, (0, 1))(
        x, _pad_columns(w, 8), *padded_args, vocab_size=REAL
    )
    _check(got, want, {"x": grads[0], "w": grads[1]}, {"x": want_grads[0], "w": want_grads[1]},
           {"w": 1})  # fmt: skip


@pytest.mark.exhaustive
def test_a_target_past_the_vocabulary_is_out_of_range(x64):
    x, w, b, y = build.linear_problem(v=PAD)
    y = jnp.where(y >= 0, y % REAL, y).at[0].set(REAL + 1)
    per_token = jl.linear_cross_entropy(x, w, y, reduction="none", vocab_size=REAL)
    assert jnp.isnan(per_token[0]) and not jnp.any(jnp.isnan(per_token[1:]))
    logits = x @ w
    assert jnp.isnan(jl.cross_entropy(logits, y, reduction="none", vocab_size=REAL)[0])
    ids = jnp.full((x.shape[0], 2), 3).at[0, 1].set(REAL)
    kl = jl.linear_kl_div(
        x, w, teacher_topk=(ids, jnp.zeros(ids.shape)), reduction="none", vocab_size=REAL
    )
    assert jnp.isnan(kl[0]) and not jnp.any(jnp.isnan(kl[1:]))


@pytest.mark.exhaustive
@pytest.mark.parametrize(
    "value, error, pattern",
    [
        (0, ValueError, r"vocab_size must be in \[1, 32\]"),
        (33, ValueError, r"vocab_size must be in \[1, 32\]"),
        (True, TypeError, "vocab_size must be a Python int"),
        (29.0, TypeError, "vocab_size must be a Python int"),
    ],
)
def test_bad_vocab_size(value, error, pattern):
    x, w, _, y = build.linear_problem(v=PAD, dtype=jnp.float32)
    calls = [
        lambda: jl.cross_entropy(x @ w, y, vocab_size=value),
        lambda: jl.linear_cross_entropy(x, w, y, vocab_size=value),
        lambda: jl.linear_kl_div(x, w, x, w, vocab_size=value),
    ]
    for call in calls:
        with pytest.raises(error, match=pattern):
            call()
