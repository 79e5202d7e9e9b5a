"""The checks every public function owes, run over the registry (tests/registry.py).

Registering a function is all it takes to be held to them: a nan in an element gives
nan for that element in value and gradient; a dropped element (ignored, zero weight,
padded) adds exactly 0 whatever it holds; an empty batch for every reduction; class
indices of every integer dtype at class counts the dtype cannot hold; out-of-range
targets (nan value and nan gradient for that element); extreme scores; the gradient
of every floating argument against finite differences (second order where the math
is smooth); bfloat16 and float16 against float64; jit, vmap and forward mode.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxloss as jl
from tests.registry import ENTRIES, REGISTRY

INDEXED = [e for e in ENTRIES if e.index is not None]


def rotated(entries, start):
    """``entries`` from ``start`` on, then the rest. The quick tier keeps each check's
    first few cases; rotating the lists spreads those over the functions, while the
    exhaustive tier runs every function through every check."""
    start %= len(entries)
    return entries[start:] + entries[:start]


DROPPING = [e for e in ENTRIES if e.drop is not None]
SMOOTH = [e for e in ENTRIES if e.smooth]
NAMES = lambda e: e.name  # noqa: E731
INTEGER_DTYPES = (jnp.int8, jnp.uint8, jnp.int16, jnp.uint16, jnp.int32, jnp.uint32)


def _arrays(entry, n=3, seed=0, dtype=None):
    """The entry's problem as JAX arrays, floating ones in ``dtype`` (JAX's default
    float when None: float64 under the x64 fixture)."""
    out = {}
    for key, value in entry.make(n, seed).items():
        value = np.asarray(value)
        if np.issubdtype(value.dtype, np.floating):
            out[key] = jnp.asarray(value, dtype or jnp.asarray(1.0).dtype)
        else:
            out[key] = jnp.asarray(value)
    return out


def _floating(args):
    return [k for k, v in args.items() if jnp.issubdtype(v.dtype, jnp.floating)]


def _none(entry, args):
    """Per-element losses (batch first)."""
    return entry.call(**args, reduction="none")


def _element(entry, args, key, index, value):
    """``args`` with element ``index`` of ``key`` (along its batch axis) set to ``value``."""
    axis = entry.axis(key)
    moved = jnp.moveaxis(args[key], axis, 0)
    return {**args, key: jnp.moveaxis(moved.at[index].set(value), 0, axis)}


def _slice(entry, key, array, index):
    return jnp.moveaxis(array, entry.axis(key), 0)[index]


def _grad_of_sum(entry, args, key):
    return jax.grad(lambda v: jnp.sum(_none(entry, {**args, key: v})))(args[key])


def test_every_public_function_is_registered():
    assert set(REGISTRY) == set(jl.__all__)


@pytest.mark.parametrize("entry", ENTRIES, ids=NAMES)
def test_every_floating_argument_has_a_role(x64, entry):
    floating = set(_floating(_arrays(entry)))
    assert set(entry.differentiable) | set(entry.constant) == floating
    assert not set(entry.differentiable) & set(entry.constant)


@pytest.mark.exhaustive(quick_cases=3)
@pytest.mark.parametrize("entry", rotated(ENTRIES, 0), ids=NAMES)
def test_gradient_of_every_floating_argument(x64, entry):
    """Differentiable arguments against finite differences, forward and reverse;
    constant ones have a gradient of exactly 0."""
    args = _arrays(entry)
    for key in entry.differentiable:

        def f(v, key=key):
            return jnp.sum(entry.call(**{**args, key: v}, reduction=entry.reductions[0]))

        check_grads(f, (args[key],), order=1, modes=("fwd", "rev"), atol=1e-5, rtol=1e-5)
    for key in entry.constant:
        assert not np.any(np.asarray(_grad_of_sum(entry, args, key))), key


@pytest.mark.exhaustive(quick_cases=1)
@pytest.mark.parametrize("entry", rotated(SMOOTH, 7), ids=NAMES)
def test_second_order_where_smooth(x64, entry):
    args = _arrays(entry, n=2)

    def f(v):
        return jnp.sum(entry.call(**{**args, entry.scores: v}, reduction=entry.reductions[0]))

    check_grads(f, (args[entry.scores],), order=2, modes=("fwd", "rev"), atol=1e-4, rtol=1e-4)


@pytest.mark.exhaustive(quick_cases=5)
@pytest.mark.parametrize("entry", rotated(ENTRIES, 5), ids=NAMES)
def test_nan_in_an_element_is_nan_for_that_element_alone(entry):
    args = _arrays(entry)
    clean = _none(entry, args)
    poisoned = _element(entry, args, entry.scores, 0, jnp.nan)
    out = _none(entry, poisoned)
    grad = _grad_of_sum(entry, poisoned, entry.scores)
    if entry.pairwise:  # the others compare with element 0: their total is nan too
        assert np.all(np.isnan(out[0]))
        assert np.isnan(entry.call(**poisoned, reduction="sum"))
        assert np.any(np.isnan(_slice(entry, entry.scores, grad, 0)))
        return
    assert np.all(np.isnan(out[0]))
    np.testing.assert_array_equal(out[1:], clean[1:])
    _assert_nan_for_the_first(entry, grad)


def _assert_nan_for_the_first(entry, grad):
    """Element 0's gradient is nan wherever its loss reads the scores (0 where it
    reads nothing, such as the classes a CTC lattice or an nll target never names);
    the other elements' gradients are finite."""
    first = np.asarray(_slice(entry, entry.scores, grad, 0))
    assert np.any(np.isnan(first)) and np.all(np.isnan(first) | (first == 0))
    assert np.all(np.isfinite(_slice(entry, entry.scores, grad, slice(1, None))))


@pytest.mark.exhaustive(quick_cases=3)
@pytest.mark.parametrize("entry", rotated(ENTRIES, 15), ids=NAMES)
def test_infinite_scores_stay_in_their_element(entry):
    """+inf or -inf in one score of element 0: the other elements are unchanged with
    finite gradients, and where element 0's value is finite, so is its gradient (the
    limit, never nan). Where every element reads element 0 (pairwise), a finite value
    everywhere has a finite gradient everywhere."""
    args = _arrays(entry)
    clean = _none(entry, args)
    moved = jnp.moveaxis(args[entry.scores], entry.axis(entry.scores), 0)
    for value in (jnp.inf, -jnp.inf):
        bad = moved.at[(0,) + (0,) * (moved.ndim - 1)].set(value)
        bad = {**args, entry.scores: jnp.moveaxis(bad, 0, entry.axis(entry.scores))}
        out = _none(entry, bad)
        grad = _grad_of_sum(entry, bad, entry.scores)
        if entry.pairwise:
            assert not np.all(np.isfinite(out)) or np.all(np.isfinite(grad)), value
            continue
        np.testing.assert_array_equal(out[1:], clean[1:])
        assert np.all(np.isfinite(_slice(entry, entry.scores, grad, slice(1, None))))
        if np.all(np.isfinite(out[0])):
            assert np.all(np.isfinite(_slice(entry, entry.scores, grad, 0))), value


@pytest.mark.exhaustive(quick_cases=3)
@pytest.mark.parametrize("entry", rotated(DROPPING, 0), ids=NAMES)
@pytest.mark.parametrize("value", [jnp.nan, jnp.inf, -jnp.inf], ids=["nan", "inf", "-inf"])
def test_a_dropped_element_adds_exactly_zero_whatever_it_holds(entry, value):
    args = _element(entry, entry_arrays := _arrays(entry), entry.scores, 0, value)
    args = {k: jnp.asarray(v) for k, v in entry.drop(args).items()}
    out = _none(entry, args)
    assert np.all(out[0] == 0)
    clean = _none(entry, {k: jnp.asarray(v) for k, v in entry.drop(entry_arrays).items()})
    np.testing.assert_array_equal(out, clean)
    for reduction in entry.reductions:
        value_and_grad = jax.value_and_grad(
            lambda v, r=reduction: jnp.sum(entry.call(**{**args, entry.scores: v}, reduction=r))
        )
        total, grad = value_and_grad(args[entry.scores])
        assert np.isfinite(total), reduction
        assert np.all(_slice(entry, entry.scores, grad, 0) == 0), reduction


@pytest.mark.exhaustive(quick_cases=3)
@pytest.mark.parametrize("entry", rotated(ENTRIES, 14), ids=NAMES)
def test_an_empty_batch(entry):
    args = _arrays(entry, n=0)
    for reduction in entry.reductions:
        out = entry.call(**args, reduction=reduction)
        if reduction == "none":
            assert out.shape[0] == 0
        else:
            assert out.shape == () and out == 0, reduction
        grad = jax.grad(lambda v, r=reduction: jnp.sum(entry.call(**{**args, entry.scores: v},
                                                                   reduction=r)))  # fmt: skip
        assert grad(args[entry.scores]).shape == args[entry.scores].shape


def _widened(entry, args, classes):
    """The problem with ``classes`` classes: every array whose last axis is the class
    axis is extended (new scores drawn, class weights 1, target lists -1); the targets
    keep their values."""
    count = entry.index[1]
    rng = np.random.default_rng(5)
    out = {}
    for key, value in args.items():
        if value.ndim == 0 or value.shape[-1] != count or key == entry.index[0] and value.ndim < 2:
            out[key] = value
            continue
        extra = (*value.shape[:-1], classes - count)
        if jnp.issubdtype(value.dtype, jnp.integer):
            fill = jnp.full(extra, -1, value.dtype)
        elif entry.axis(key) is None and value.ndim == 1:
            fill = jnp.ones(extra, value.dtype)
        else:
            fill = jnp.asarray(rng.standard_normal(extra), value.dtype)
        out[key] = jnp.concatenate([value, fill], axis=-1)
    return out


@pytest.mark.exhaustive(quick_cases=2)
@pytest.mark.parametrize("entry", rotated(INDEXED, 4), ids=NAMES)
def test_every_integer_dtype_at_class_counts_it_cannot_hold(entry):
    """300 classes: more than int8 and uint8 hold. Every dtype gives the int32 result,
    bit for bit, and it is finite."""
    args = _widened(entry, _arrays(entry, dtype=jnp.float32), 300)
    key = entry.index[0]
    reference = _none(entry, {**args, key: args[key].astype(jnp.int32)})
    assert np.all(np.isfinite(reference))
    for dtype in INTEGER_DTYPES:
        if jnp.iinfo(dtype).min == 0 and np.any(np.asarray(args[key]) < 0):
            continue  # the -1 ending a target list has no unsigned form
        out = _none(entry, {**args, key: args[key].astype(dtype)})
        np.testing.assert_array_equal(out, reference, err_msg=str(dtype))


@pytest.mark.exhaustive
def test_ctc_lengths_of_every_integer_dtype_beyond_its_range():
    """input_lengths of 200 frames in uint8 and int16 (and of T = 300 frames in int8,
    which cannot hold T): the int32 result."""
    rng = np.random.default_rng(0)
    z = rng.standard_normal((300, 2, 4))
    log_probs = jnp.asarray(z - np.log(np.exp(z).sum(-1, keepdims=True)), jnp.float32)
    targets = jnp.array([[1, 2], [3, 3]])
    reference = jl.ctc_loss(log_probs, targets, jnp.array([200, 100]), jnp.array([2, 2]),
                            reduction="none")  # fmt: skip
    assert np.all(np.isfinite(reference))
    for dtype in (jnp.uint8, jnp.int16, jnp.uint16, jnp.uint32):
        out = jl.ctc_loss(log_probs, targets.astype(dtype), jnp.array([200, 100], dtype),
                          jnp.array([2, 2], dtype), reduction="none")  # fmt: skip
        np.testing.assert_array_equal(out, reference, err_msg=str(dtype))
    int8 = jl.ctc_loss(log_probs, targets.astype(jnp.int8), jnp.array([100, 100], jnp.int8),
                       jnp.array([2, 2], jnp.int8), reduction="none")  # fmt: skip
    within = jl.ctc_loss(log_probs, targets, jnp.array([100, 100]), jnp.array([2, 2]),
                         reduction="none")  # fmt: skip
    np.testing.assert_array_equal(int8, within)


def _out_of_range_labels(entry, args):
    key, count = entry.index
    labels = np.asarray(args[key]).copy()
    values = [count, count + 7]
    if jnp.iinfo(labels.dtype).min < 0:
        values.append(-3)
    for value in values:
        first = labels.copy()
        first.reshape(labels.shape[0], -1)[0, 0] = value
        yield value, {**args, key: jnp.asarray(first)}
        if labels.ndim == 2 and jnp.iinfo(labels.dtype).min < 0:
            # A list whose only entry is out of range (the rest ended by -1).
            alone = labels.copy()
            alone[0] = -1
            alone[0, 0] = value
            yield value, {**args, key: jnp.asarray(alone)}


@pytest.mark.exhaustive(quick_cases=3)
@pytest.mark.parametrize("entry", rotated(INDEXED, 4), ids=NAMES)
def test_out_of_range_targets_give_nan_value_and_gradient_for_that_element(entry):
    args = _arrays(entry, dtype=jnp.float32)
    clean = _none(entry, args)
    for value, bad in _out_of_range_labels(entry, args):
        out = _none(entry, bad)
        if entry.coupled:  # the class weights come from every element's targets
            assert np.all(np.isnan(out)), value
            continue
        assert np.all(np.isnan(out[0])), value
        np.testing.assert_array_equal(out[1:], clean[1:])
        _assert_nan_for_the_first(entry, _grad_of_sum(entry, bad, entry.scores))


def _extremes(entry):
    if entry.domain == "logits":
        return (1e4, 1e30) if not entry.name.startswith("linear") else (1e4,)
    if entry.domain == "log_probs":
        return (1e4, 1e30)
    return ()


@pytest.mark.exhaustive(quick_cases=2)
@pytest.mark.parametrize("entry", rotated([e for e in ENTRIES if _extremes(e)], 10), ids=NAMES)
def test_extreme_scores_give_finite_values_and_gradients(entry):
    """Scores of size 1e4 and 1e30 (float32) of both signs: the math is finite, and so
    are the value and the gradient (log-probabilities: only the negative ones)."""
    args = _arrays(entry, dtype=jnp.float32)
    signs = jnp.where(args[entry.scores] > 0, 1.0, -1.0)
    if entry.domain == "log_probs":
        signs = -jnp.abs(signs)
    for scale in _extremes(entry):
        if entry.name.startswith("linear"):
            scaled = {**args, "w": args["w"] * scale / 10}
            key = "w"
        else:
            scaled = {**args, entry.scores: signs * jnp.float32(scale)}
            key = entry.scores
        value, grad = jax.value_and_grad(
            lambda v, s=scaled, k=key: jnp.sum(entry.call(**{**s, k: v}, reduction="sum"))
        )(scaled[key])
        assert np.isfinite(value), scale
        assert np.all(np.isfinite(grad)), scale


@pytest.mark.exhaustive(quick_cases=2)
@pytest.mark.parametrize("entry", rotated(ENTRIES, 25), ids=NAMES)
@pytest.mark.parametrize("dtype,rtol", [(jnp.bfloat16, 2e-2), (jnp.float16, 2e-3)],
                         ids=["bfloat16", "float16"])  # fmt: skip
def test_low_precision_against_float64(x64, entry, dtype, rtol):
    """16-bit inputs accumulate in float32: the result is the float64 value of the same
    (rounded) inputs to the output's precision."""
    low = _arrays(entry, dtype=dtype)
    exact = {k: v.astype(jnp.float64) if k in _floating(low) else v for k, v in low.items()}
    reduction = "mean" if "mean" in entry.reductions else "none"
    got = entry.call(**low, reduction=reduction)
    assert got.dtype == dtype
    want = np.asarray(entry.call(**exact, reduction=reduction))
    scale = float(np.max(np.abs(want))) or 1.0
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=rtol, atol=rtol * scale)


@pytest.mark.exhaustive(quick_cases=2)
@pytest.mark.parametrize("entry", rotated(ENTRIES, 12), ids=NAMES)
def test_jit_vmap_and_forward_mode(x64, entry):
    args = _arrays(entry)
    reduction = entry.reductions[0]
    eager = entry.call(**args, reduction=reduction)
    np.testing.assert_allclose(jax.jit(lambda a: entry.call(**a, reduction=reduction))(args),
                               eager, rtol=1e-12, atol=1e-12)  # fmt: skip
    other = _arrays(entry, seed=1)
    batched = {k: v for k, v in args.items() if entry.axis(k) is not None}
    pair = {k: jnp.stack([args[k], other[k]]) for k in batched}
    shared = {k: v for k, v in args.items() if k not in batched}
    mapped = jax.vmap(lambda b: entry.call(**b, **shared, reduction=reduction))(pair)
    second = entry.call(**{**other, **shared}, reduction=reduction)
    np.testing.assert_allclose(mapped, jnp.stack([eager, second]), rtol=1e-12, atol=1e-12)

    def f(v):
        return jnp.sum(entry.call(**{**args, entry.scores: v}, reduction=reduction))

    scores = args[entry.scores]
    np.testing.assert_allclose(jax.jacfwd(f)(scores), jax.jacrev(f)(scores), rtol=1e-10, atol=1e-12)
