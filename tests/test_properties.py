"""Properties over many inputs: target dtypes, ignore_index, logit offsets, nan, ignored elements.

Each test draws inputs with hypothesis (derandomized, so CI sees the same cases) and
checks one promise against either the same computation with int32 targets (bit for
bit), a float64 reference written from the formulas, or the loss with the suspect
elements removed.
"""

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxloss as jl
from tests import builders as build
from tests import reference as ref

SETTINGS = hypothesis.settings(max_examples=12, deadline=None, derandomize=True)
# Per target dtype: seven dtypes (and int64 under x64), so 48 draws of function, class
# count and ignore_index.
PER_DTYPE = hypothesis.settings(max_examples=6, deadline=None, derandomize=True)

# Every integer width a user may store class indices in. "int64" without x64 is a NumPy
# array, which JAX stores as int32 after the range check.
TARGET_DTYPES = ["int8", "uint8", "int16", "uint16", "int32", "uint32", "int64"]
# Class counts below, inside and beyond what the narrow dtypes can represent.
CLASS_COUNTS = [5, 300, 40000]
IGNORE_INDICES = [-100, -1, 0, 3, 255, 256, 40000, 2**40, -(2**40)]


def _fits(value, dtype):
    info = np.iinfo(dtype)
    return info.min <= value <= info.max


def _target_values(draw, num_classes, dtype, ignore_index, n):
    """Values representable in ``dtype``: valid classes, out-of-range ones, the ignore value."""
    info = np.iinfo(dtype)
    candidates = [0, 1, 2, num_classes - 1, num_classes, num_classes + 1, -1, -100, -128]
    candidates += [127, 128, 255, 256, 32767, 65535, ignore_index, info.max, info.min]
    candidates = sorted({v for v in candidates if _fits(v, dtype) and _fits(v, np.int32)})
    return draw(st.lists(st.sampled_from(candidates), min_size=n, max_size=n))


def _index_losses(fn, first, targets, **kwargs):
    """Per-element losses, the mean, and the mean's gradient in every float argument."""
    per = fn(*first, targets, reduction="none", **kwargs)
    mean, grads = jax.value_and_grad(
        lambda *a: fn(*a, targets, **kwargs), argnums=tuple(range(len(first)))
    )(*first)
    return [per, mean, *grads]


def _assert_identical(got, want):
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


def _operands(name, num_classes, n, seed):
    if name == "linear_cross_entropy":
        hidden = 4
        x = build.normal((n, hidden), seed)
        w = build.normal((hidden, num_classes), seed + 100) / 2
        return jl.linear_cross_entropy, (x, w)
    logits = 3 * build.normal((n, num_classes), seed)
    if name == "nll_loss":
        return jl.nll_loss, (jl.log_softmax(logits),)
    return jl.cross_entropy, (logits,)


@pytest.mark.exhaustive
@pytest.mark.parametrize("dtype", TARGET_DTYPES)
@PER_DTYPE
@hypothesis.given(data=st.data())
def test_every_integer_target_dtype_gives_the_int32_answer_bit_for_bit(dtype, data):
    name = data.draw(st.sampled_from(["cross_entropy", "nll_loss", "linear_cross_entropy"]))
    num_classes = data.draw(st.sampled_from(CLASS_COUNTS))
    ignore_index = data.draw(st.sampled_from(IGNORE_INDICES))
    n = 6
    values = _target_values(data.draw, num_classes, dtype, ignore_index, n)
    kwargs = {"ignore_index": ignore_index}
    if name != "nll_loss" and data.draw(st.booleans()):
        kwargs["label_smoothing"] = 0.1
    if data.draw(st.booleans()):
        kwargs["weight"] = jnp.linspace(0.5, 1.5, num_classes)
    fn, first = _operands(name, num_classes, n, data.draw(st.integers(0, 99)))
    want = _index_losses(fn, first, jnp.asarray(np.array(values, np.int32)), **kwargs)
    got = _index_losses(fn, first, np.array(values, dtype), **kwargs)
    _assert_identical(got, want)


@pytest.mark.exhaustive
@PER_DTYPE
@hypothesis.given(data=st.data())
def test_int64_targets_under_x64_give_the_int32_answer(data):
    name = data.draw(st.sampled_from(["cross_entropy", "nll_loss", "linear_cross_entropy"]))
    num_classes = data.draw(st.sampled_from(CLASS_COUNTS))
    ignore_index = data.draw(st.sampled_from(IGNORE_INDICES))
    values = _target_values(data.draw, num_classes, "int64", ignore_index, 6)
    with jax.enable_x64(True):
        fn, first = _operands(name, num_classes, 6, 3)
        first = tuple(a.astype(jnp.float32) for a in first)
        want = _index_losses(fn, first, jnp.asarray(values, jnp.int32), ignore_index=ignore_index)
        wide = jnp.asarray(values, jnp.int64)
        assert wide.dtype == jnp.int64
        got = _index_losses(fn, first, wide, ignore_index=ignore_index)
    _assert_identical(got, want)


def test_int64_targets_beyond_int32_are_out_of_range_under_x64_and_refused_without_it():
    logits = jnp.zeros((3, 4))
    huge = np.array([1, 2**32 - 100, 2**40 + 2], np.int64)  # would wrap to -100 and 2 in int32
    with jax.enable_x64(True):
        per = jl.cross_entropy(logits.astype(jnp.float32), jnp.asarray(huge), reduction="none")
        assert np.isfinite(per[0]) and np.isnan(per[1]) and np.isnan(per[2])
    with pytest.raises(ValueError, match=r"targets holds int64 values .* outside the range"):
        jl.cross_entropy(logits, huge)


@pytest.mark.exhaustive(quick_cases=3)
@pytest.mark.parametrize("dtype", TARGET_DTYPES)
@pytest.mark.parametrize("ignore_index", IGNORE_INDICES)
def test_ignore_index_is_a_mathematical_integer(dtype, ignore_index):
    """Only a target equal to ignore_index as an integer is ignored; a value the dtype
    cannot hold (-100 for unsigned, 256 for int8, 2**40 for int32) matches nothing."""
    num_classes = 300
    values = [v for v in (0, 1, 156, 200, 255, 127, 44, 3) if _fits(v, dtype)]
    if _fits(ignore_index, dtype) and 0 <= ignore_index < num_classes:
        values.append(ignore_index)
    targets = np.array(values, dtype)
    logits = build.normal((len(values), num_classes), 0)
    with jax.enable_x64(True):
        want = ref.cross_entropy_index(
            np.asarray(logits, np.float64),
            np.asarray(values, np.int64),
            ignore_index=ignore_index,
            reduction="none",
        )
    got = jl.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="none")
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6)
    ignored = [v == ignore_index for v in values]
    assert [bool(g == 0) for g in got] == ignored


# Logits on a grid of 1/16 with |x| <= 16: x + c is exact in float32 for integer |c| <= 1e6,
# so any change of the loss comes from the algorithm, not from rounding the input.
GRID_LOGITS = st.lists(st.integers(-256, 256), min_size=7 * 5, max_size=7 * 5).map(
    lambda v: jnp.asarray(np.array(v, np.float32).reshape(7, 5) / 16)
)
OFFSETS = st.lists(st.integers(-(10**6), 10**6), min_size=7, max_size=7).map(
    lambda v: jnp.asarray(np.array(v, np.float32))[:, None]
)


def _assert_within_ulps(got, want, ulps=4):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    scale = np.maximum(np.abs(want), np.finfo(np.float32).tiny)
    tol = ulps * np.spacing(scale.astype(np.float32)).astype(np.float64)
    assert np.all(np.abs(got - want) <= tol), (got, want, np.abs(got - want) / tol)


@pytest.mark.exhaustive
@SETTINGS
@hypothesis.given(
    x=GRID_LOGITS,
    c=OFFSETS,
    kind=st.sampled_from(["index", "probs", "smoothed", "weighted", "nll"]),
    seed=st.integers(0, 99),
)
def test_a_common_offset_of_the_logits_does_not_change_the_loss(x, c, kind, seed):
    y = build.integers((7,), seed, 0, 5)
    probs = jax.nn.softmax(build.normal((7, 5), seed))
    weight = jnp.array([0.5, 2.0, 1.0, 0.25, 1.5])
    fn = {
        "index": lambda v: jl.cross_entropy(v, y, reduction="none"),
        "probs": lambda v: jl.cross_entropy(v, probs, reduction="none"),
        "smoothed": lambda v: jl.cross_entropy(v, y, label_smoothing=0.2, reduction="none"),
        "weighted": lambda v: jl.cross_entropy(v, probs, weight=weight, reduction="none"),
        "nll": lambda v: jl.nll_loss(jl.log_softmax(v), y, weight=weight, reduction="none"),
    }[kind]
    base, shifted = fn(x), fn(x + c)
    _assert_within_ulps(shifted, base)
    grad = jax.grad(lambda v: jnp.sum(fn(v)))
    np.testing.assert_allclose(grad(x + c), grad(x), rtol=0, atol=4 * np.finfo(np.float32).eps)


@pytest.mark.exhaustive
@SETTINGS
@hypothesis.given(
    c=st.integers(-(10**6), 10**6),
    seed=st.integers(0, 99),
    smoothing=st.sampled_from([0.0, 0.1]),
    reduction=st.sampled_from(["mean", "none"]),
)
def test_a_common_offset_through_the_bias_does_not_change_linear_cross_entropy(
    c, seed, smoothing, reduction
):
    # Quarter-integer operands: x @ w + b is exact in float32, and so is adding c.
    x = jnp.round(4 * build.normal((9, 4), seed)) / 4
    w = jnp.round(4 * build.normal((4, 11), seed + 1)) / 4
    b = jnp.round(16 * build.normal((11,), seed + 2)) / 16
    y = build.integers((9,), seed + 3, 0, 11)

    def loss(x, w, b):
        return jl.linear_cross_entropy(
            x, w, y, bias=b, label_smoothing=smoothing, reduction=reduction, chunk_size=4
        )

    _assert_within_ulps(loss(x, w, b + c), loss(x, w, b))
    grads = jax.grad(lambda *a: jnp.sum(loss(*a)), argnums=(0, 1, 2))
    for g_shift, g_base in zip(grads(x, w, b + c), grads(x, w, b), strict=True):
        np.testing.assert_allclose(g_shift, g_base, rtol=0, atol=1e-5)


def test_offset_of_1e4_matches_the_float64_reference():
    """The README's claim: logits of +-1e4 give the exact loss."""
    x = jnp.array([[1e4, 1e4 - 1.5, 1e4 - 3.0], [-1e4, -1e4 + 0.25, -1e4 + 7.0]], jnp.float32)
    y = jnp.array([1, 0])
    with jax.enable_x64(True):
        want = ref.cross_entropy_index(np.asarray(x, np.float64), np.asarray(y), reduction="none")
    _assert_within_ulps(jl.cross_entropy(x, y, reduction="none"), want, ulps=2)


def _nan_at(shape, flat_index):
    return jnp.zeros(shape).reshape(-1).at[flat_index].set(jnp.nan).reshape(shape)


@SETTINGS
@hypothesis.given(
    row=st.integers(0, 5), col=st.integers(0, 4), seed=st.integers(0, 99), data=st.data()
)
def test_nan_in_makes_exactly_the_affected_elements_nan(row, col, seed, data):
    """A nan in the logits or a target makes that element's loss nan (and so the mean),
    and no other element's."""
    x = build.normal((6, 5), seed)
    y = build.integers((6,), seed, 0, 5)
    t = jax.nn.softmax(build.normal((6, 5), seed + 1))
    probs = jax.nn.sigmoid(x)
    nan = _nan_at((6, 5), row * 5 + col)
    case = data.draw(
        st.sampled_from(
            [
                ("cross_entropy index, nan logit", lambda r: jl.cross_entropy(x + nan, y, **r)),
                (
                    "cross_entropy smoothed",
                    lambda r: jl.cross_entropy(x + nan, y, label_smoothing=0.1, **r),
                ),
                ("cross_entropy probs, nan logit", lambda r: jl.cross_entropy(x + nan, t, **r)),
                ("cross_entropy probs, nan target", lambda r: jl.cross_entropy(x, t + nan, **r)),
                (
                    "log_softmax + nll_loss",
                    lambda r: jl.nll_loss(jl.log_softmax(x + nan), y.at[row].set(col), **r),
                ),
                ("kl_div target", lambda r: jl.kl_div(jl.log_softmax(x), t + nan, **r)),
                (
                    "bce with logits, logit",
                    lambda r: jl.binary_cross_entropy_with_logits(x + nan, t, **r),
                ),
                (
                    "bce with logits, target",
                    lambda r: jl.binary_cross_entropy_with_logits(x, t + nan, **r),
                ),
                ("bce, probability", lambda r: jl.binary_cross_entropy(probs + nan, t, **r)),
                ("bce, target", lambda r: jl.binary_cross_entropy(probs, t + nan, **r)),
            ]
        ),
        label="case",
    )[1]
    per = np.asarray(case({"reduction": "none"}))
    affected = np.zeros(per.shape, bool)
    affected[(row, col) if per.ndim == 2 else row] = True
    np.testing.assert_array_equal(np.isnan(per), affected)
    assert np.isnan(case({"reduction": "mean"}))


@pytest.mark.exhaustive
def test_nan_logits_propagate_through_linear_cross_entropy():
    x = build.normal((5, 3), 0).at[2, 1].set(jnp.nan)
    w = build.normal((3, 7), 1)
    y = jnp.array([0, 1, 2, 3, 4])
    per = jl.linear_cross_entropy(x, w, y, reduction="none")
    np.testing.assert_array_equal(np.isnan(per), [False, False, True, False, False])
    assert np.isnan(jl.linear_cross_entropy(x, w, y))


GARBAGE = st.sampled_from([jnp.nan, jnp.inf, -jnp.inf, 3e38, -3e38])


@pytest.mark.exhaustive
@SETTINGS
@hypothesis.given(
    ignored=st.lists(st.booleans(), min_size=6, max_size=6),
    garbage=GARBAGE,
    options=st.sampled_from(
        [{}, {"label_smoothing": 0.2}, {"logit_softcap": 5.0}, {"z_loss": 1e-3}, {"weight": 1}]
    ),
    reduction=st.sampled_from(["mean", "sum"]),
    seed=st.integers(0, 99),
)
def test_ignored_elements_contribute_nothing_to_cross_entropy(
    ignored, garbage, options, reduction, seed
):
    """Ignored rows (ignore_index, or a class of weight 0) add exactly 0 to the loss and
    get exactly 0 gradient, even when their logits are nan or infinite."""
    x = build.normal((6, 5), seed)
    y = build.integers((6,), seed + 1, 1, 5)
    mask = jnp.array(ignored)
    if "weight" in options:
        # class 0 has weight 0: those rows are ignored unless smoothing or z-loss is on
        options = {"weight": jnp.array([0.0, 1.0, 2.0, 0.5, 1.0])}
        y = jnp.where(mask, 0, y)
    else:
        y = jnp.where(mask, -100, y)
    dirty = jnp.where(mask[:, None], garbage, x)
    clean = jnp.where(mask[:, None], 0.0, x)

    def run(v):
        return jax.value_and_grad(lambda z: jl.cross_entropy(z, y, reduction=reduction, **options))(
            v
        )

    (loss_d, grad_d), (loss_c, grad_c) = run(dirty), run(clean)
    np.testing.assert_array_equal(loss_d, loss_c)
    np.testing.assert_array_equal(grad_d, grad_c)
    assert np.all(np.asarray(grad_d)[np.asarray(ignored)] == 0.0)
    assert np.all(np.isfinite(np.asarray(grad_d)))


@pytest.mark.exhaustive
@SETTINGS
@hypothesis.given(
    ignored=st.lists(st.booleans(), min_size=9, max_size=9),
    garbage=st.sampled_from([jnp.nan, jnp.inf, 1e30]),
    options=st.sampled_from(
        [{}, {"label_smoothing": 0.1}, {"logit_softcap": 4.0}, {"z_loss": 1e-3}]
    ),
    reduction=st.sampled_from(["mean", "sum", "none"]),
)
def test_ignored_tokens_contribute_nothing_to_linear_cross_entropy(
    ignored, garbage, options, reduction
):
    """Hidden states of ignored tokens that are nan, infinite or overflow the logits do
    not reach the loss or any gradient (x, w or bias)."""
    x = build.normal((9, 4), 7)
    w = build.normal((4, 6), 8)
    b = build.normal((6,), 9)
    mask = jnp.array(ignored)
    y = jnp.where(mask, -100, build.integers((9,), 7, 0, 6))
    dirty = jnp.where(mask[:, None], garbage, x)
    clean = jnp.where(mask[:, None], 0.0, x)

    def run(v):
        def total(v, w, b):
            out = jl.linear_cross_entropy(
                v, w, y, bias=b, reduction=reduction, chunk_size=4, **options
            )
            return jnp.sum(out)

        return jax.value_and_grad(total, argnums=(0, 1, 2))(v, w, b)

    (loss_d, grads_d), (loss_c, grads_c) = run(dirty), run(clean)
    np.testing.assert_allclose(loss_d, loss_c, rtol=1e-6)
    for g_d, g_c in zip(grads_d, grads_c, strict=True):
        assert np.all(np.isfinite(np.asarray(g_d)))
        np.testing.assert_allclose(g_d, g_c, rtol=1e-6, atol=1e-7)
    assert np.all(np.asarray(grads_d[0])[np.asarray(ignored)] == 0.0)


@pytest.mark.exhaustive
@SETTINGS
@hypothesis.given(
    masked=st.lists(st.booleans(), min_size=5, max_size=5).filter(lambda m: not all(m)),
    garbage=GARBAGE,
    use_probs=st.booleans(),
    smoothing=st.sampled_from([0.0, 0.3]),
)
def test_classes_masked_by_where_contribute_nothing(masked, garbage, use_probs, smoothing):
    x = build.normal((4, 5), 1)
    where = ~jnp.array(masked)
    if use_probs:
        t = jnp.where(where, build.uniform((4, 5), 2), 0.0)
        t = t / jnp.sum(t, -1, keepdims=True)
    else:
        keep = np.flatnonzero(np.asarray(where))
        t = jnp.asarray(keep[np.arange(4) % len(keep)])
    dirty = jnp.where(where, x, garbage)

    def run(v):
        return jax.value_and_grad(
            lambda z: jl.cross_entropy(z, t, where=where, label_smoothing=smoothing)
        )(v)

    (loss_d, grad_d), (loss_c, grad_c) = run(dirty), run(x)
    np.testing.assert_array_equal(loss_d, loss_c)
    np.testing.assert_array_equal(grad_d, grad_c)
    assert np.all(np.asarray(grad_d)[:, np.asarray(masked)] == 0.0)


@SETTINGS
@hypothesis.given(
    zero=st.lists(st.booleans(), min_size=6, max_size=6),
    garbage=st.sampled_from([jnp.nan, jnp.inf, -jnp.inf, 2.0]),
    fn=st.sampled_from([jl.binary_cross_entropy_with_logits, jl.binary_cross_entropy]),
)
def test_zero_weight_elements_of_binary_losses_contribute_nothing(zero, garbage, fn):
    """A weight of 0 ignores the element, even where its input is nan, infinite or (for
    probabilities) outside [0, 1]."""
    zero = jnp.array(zero)
    first = jax.nn.sigmoid(build.normal((6,), 0))
    t = build.uniform((6,), 1)
    weight = jnp.where(zero, 0.0, 1.5)

    def run(v):
        return jax.value_and_grad(lambda z: fn(z, t, weight=weight, reduction="sum"))(v)

    (loss_d, grad_d) = run(jnp.where(zero, garbage, first))
    (loss_c, grad_c) = run(jnp.where(zero, 0.5, first))
    np.testing.assert_array_equal(loss_d, loss_c)
    np.testing.assert_array_equal(grad_d, grad_c)
    assert np.all(np.asarray(grad_d)[np.asarray(zero)] == 0.0)
