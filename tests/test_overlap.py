"""The Dice, Tversky and generalized Dice losses: float64 values and gradients against
optax and against Keras 3's formulas (written here: Keras is not a dependency),
K-dimensional inputs, index and one-hot targets, the empty class, second derivatives,
extreme logits, low precision and errors."""

import re

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxloss as jl

SETTINGS = hypothesis.settings(max_examples=10, deadline=None, derandomize=True)


def _problem(seed, shape, classes):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(*shape, classes)) * 2.0
    labels = rng.integers(0, classes, size=shape)
    return jnp.asarray(logits), jnp.asarray(labels), jax.nn.one_hot(labels, classes)


def _value_and_grad(fn, x):
    """fn's value, and the gradient of its values weighted 1, 2, ... (one compiled program
    each, where running optax's formulas op by op would compile every operation)."""
    value = jax.jit(fn)(x)
    weights = jnp.arange(1.0, 1.0 + value.size).reshape(value.shape)
    return value, jax.jit(jax.grad(lambda x: jnp.sum(fn(x) * weights)))(x)


def _same(ours, theirs, tol=1e-12):
    for got, want in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


@pytest.mark.exhaustive
@SETTINGS
@hypothesis.given(
    seed=st.integers(0, 2**16),
    shape=st.sampled_from([(3,), (2, 4), (2, 3, 3)]),
    classes=st.integers(2, 4),
    alpha=st.sampled_from([0.5, 0.3, 1.0]),
    beta=st.sampled_from([0.5, 0.7, 0.0]),
    smooth=st.sampled_from([1.0, 0.0, 1e-3]),
    weighted=st.booleans(),
    ignore_background=st.booleans(),
)
def test_tversky_and_dice_match_optax(
    seed, shape, classes, alpha, beta, smooth, weighted, ignore_background
):
    optax = pytest.importorskip("optax")
    with jax.enable_x64(True):
        logits, labels, one_hot = _problem(seed, shape, classes)
        w = jnp.linspace(0.5, 2.0, classes) if weighted else None
        kwargs = {"smooth": smooth, "ignore_background": ignore_background}
        theirs = lambda x: optax.losses.dice_loss(  # noqa: E731
            x, one_hot, alpha=alpha, beta=beta, class_weights=w, **kwargs
        )
        for targets in (labels, one_hot):
            ours = lambda x, t=targets: jl.tversky_loss(  # noqa: E731
                x, t, alpha=alpha, beta=beta, weight=w, reduction="none", **kwargs
            ).mean(-1)
            _same(_value_and_grad(ours, logits), _value_and_grad(theirs, logits))
        if alpha == beta == 0.5:
            ours = jl.dice_loss(logits, labels, weight=w, **kwargs)
            np.testing.assert_allclose(ours, jnp.mean(theirs(logits)), rtol=1e-12)


@pytest.mark.exhaustive(quick_cases=1)
@pytest.mark.parametrize("ignore_background", [False, True])
def test_generalized_and_binary_dice_match_optax(x64, ignore_background):
    optax = pytest.importorskip("optax")
    logits, labels, one_hot = _problem(1, (2, 3, 3), 3)
    ours = lambda x: jl.generalized_dice_loss(x, labels, ignore_background=ignore_background)  # noqa: E731
    theirs = lambda x: optax.losses.multiclass_generalized_dice_loss(  # noqa: E731
        x, one_hot, ignore_background=ignore_background
    )
    _same(_value_and_grad(ours, logits), _value_and_grad(theirs, logits))
    binary = logits[..., 0]
    ours = lambda x: jl.dice_loss(x, one_hot[..., 0], axis=None, reduction="none")  # noqa: E731
    theirs = lambda x: optax.losses.binary_dice_loss(x, one_hot[..., 0])  # noqa: E731
    _same(_value_and_grad(ours, binary), _value_and_grad(theirs, binary))


def _keras_dice(y_true, y_pred):
    """Keras 3 ``keras.losses.Dice`` (axis=None): over every element at once."""
    y_true, y_pred = np.ravel(y_true), np.ravel(y_pred)
    intersection = np.sum(y_true * y_pred)
    return 1.0 - 2.0 * intersection / (np.sum(y_true) + np.sum(y_pred))


def _keras_tversky(y_true, y_pred, alpha, beta):
    """Keras 3 ``keras.losses.Tversky(alpha, beta)``: alpha weighs the false positives."""
    y_true, y_pred = np.ravel(y_true), np.ravel(y_pred)
    tp = np.sum(y_true * y_pred)
    fp = np.sum((1.0 - y_true) * y_pred)
    fn = np.sum(y_true * (1.0 - y_pred))
    return 1.0 - tp / (tp + alpha * fp + beta * fn)


def test_keras_formulas(x64):
    rng = np.random.default_rng(2)
    probs, targets = rng.uniform(size=(4, 5, 3)), rng.integers(0, 2, size=(4, 5, 3)) * 1.0
    keras = {"axis": None, "smooth": 0.0, "from_logits": False, "per_sample": False}
    np.testing.assert_allclose(
        jl.dice_loss(probs, targets, **keras), _keras_dice(targets, probs), rtol=1e-13
    )
    for alpha, beta in [(0.5, 0.5), (0.3, 0.7), (0.9, 0.1)]:
        np.testing.assert_allclose(
            jl.tversky_loss(probs, targets, alpha=alpha, beta=beta, **keras),
            _keras_tversky(targets, probs, alpha, beta),
            rtol=1e-13,
        )


def test_classes_on_axis_one_with_index_or_one_hot_targets(x64):
    logits, labels, one_hot = _problem(3, (2, 4, 5), 3)
    channels_first = jnp.moveaxis(logits, -1, 1)  # PyTorch's (N, C, H, W)
    want = jl.dice_loss(logits, labels, reduction="none")
    for targets in (labels, jnp.moveaxis(one_hot, -1, 1)):
        got = jl.dice_loss(channels_first, targets, axis=1, reduction="none")
        np.testing.assert_allclose(got, want, rtol=1e-13)
    per_class = jl.dice_loss(channels_first, labels, axis=1, per_sample=False, reduction="none")
    assert per_class.shape == (3,)
    # per_sample=False pools the batch: the loss of the concatenated samples.
    pooled = jl.dice_loss(logits.reshape(1, -1, 3), labels.reshape(1, -1), reduction="none")
    np.testing.assert_allclose(per_class, pooled[0], rtol=1e-13)


def test_an_empty_class_is_a_perfect_match(x64):
    # Class 2 has no target and no predicted mass: 0/0 without smoothing, defined as 0
    # with a zero gradient; with smoothing, s/s = 1, and mass predicted for it would
    # cost alpha * s / s^2 per unit.
    probs = jnp.array([[0.7, 0.3, 0.0], [0.2, 0.8, 0.0]])
    labels = jnp.array([0, 1])
    for smooth in (0.0, 1.0):

        def empty_class(p, s=smooth):
            out = jl.dice_loss(p, labels, smooth=s, from_logits=False, per_sample=False,
                               reduction="none")  # fmt: skip
            return out[2]

        value, grad = jax.value_and_grad(empty_class)(probs)
        assert value == 0.0
        np.testing.assert_array_equal(grad[:, :2], 0.0)
        np.testing.assert_array_equal(grad[:, 2], 0.0 if smooth == 0 else 0.5)


def test_class_indices_outside_the_classes_are_nan_for_their_sample(x64):
    logits, labels, _ = _problem(4, (3, 4), 3)
    loss = jl.dice_loss(logits, labels.at[1, 2].set(3), reduction="none")
    loss = np.asarray(loss)
    assert np.all(np.isfinite(loss[[0, 2]])) and np.all(np.isnan(loss[1]))


@pytest.mark.exhaustive
@pytest.mark.parametrize("name", ["dice", "tversky", "generalized", "binary"])
def test_second_derivatives_against_finite_differences(x64, name):
    logits, labels, _ = _problem(5, (2, 3), 3)
    fns = {
        "dice": lambda x: jl.dice_loss(x, labels, smooth=0.5),
        "tversky": lambda x: jl.tversky_loss(x, labels, alpha=0.2, beta=0.9, per_sample=False),
        "generalized": lambda x: jl.generalized_dice_loss(x, labels),
        "binary": lambda x: jl.dice_loss(x[..., 0], labels == 1, axis=None, smooth=0.0),
    }
    check_grads(jax.jit(fns[name]), (logits,), order=2, modes=("fwd", "rev"))


def test_gradient_with_respect_to_the_options(x64):
    p, t = jnp.array([0.9, 0.2, 0.6, 0.1]), jnp.array([1.0, 0.0, 1.0, 0.0])

    def loss(alpha, beta, smooth):
        return jl.tversky_loss(p, t, alpha=alpha, beta=beta, smooth=smooth, axis=None,
                               from_logits=False, per_sample=False)  # fmt: skip

    check_grads(jax.jit(loss), (0.3, 0.6, 0.5), order=2, modes=("fwd", "rev"))


@pytest.mark.exhaustive
def test_extreme_logits_stay_finite():
    logits = jnp.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4]])
    for fn in (jl.dice_loss, jl.tversky_loss, jl.generalized_dice_loss):
        value, grad = jax.value_and_grad(fn)(logits, jnp.array([0, 2]))
        assert np.isfinite(value) and np.all(np.isfinite(grad))


@pytest.mark.exhaustive
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_is_accumulated_in_float32(dtype):
    logits, labels, _ = _problem(6, (64,), 4)
    x = logits.astype(dtype)
    for fn in (jl.dice_loss, jl.generalized_dice_loss):
        value, grad = jax.value_and_grad(fn)(x, labels)
        want, want_grad = jax.value_and_grad(fn)(x.astype(jnp.float32), labels)
        assert value.dtype == dtype and grad.dtype == dtype
        eps = float(jnp.finfo(dtype).eps)
        np.testing.assert_allclose(np.float32(value), want, rtol=eps)
        np.testing.assert_allclose(np.float32(grad), want_grad, atol=eps)


X, Y = np.zeros((2, 3), np.float32), np.array([0, 1])
BAD_CALLS = [
    (lambda: jl.dice_loss(X.astype(int), Y), TypeError, "predictions must have a floating"),
    (lambda: jl.dice_loss(X, Y[:1]), ValueError, "targets must have the predictions' shape"),
    (lambda: jl.dice_loss(X, Y, axis=2), ValueError, "axis 2 is out of bounds"),
    (lambda: jl.dice_loss(X, Y, smooth=-1.0), ValueError, "smooth must be >= 0"),
    (lambda: jl.tversky_loss(X, Y, alpha=-0.1), ValueError, "alpha must be >= 0"),
    (lambda: jl.tversky_loss(X, Y, beta="x"), TypeError, "beta must be a real number"),
    (lambda: jl.dice_loss(X, Y, weight=np.ones(2)), ValueError, "weight must have shape (3,)"),
    (lambda: jl.dice_loss(X, Y, per_sample=1), TypeError, "per_sample must be a bool"),
    (lambda: jl.dice_loss(X, Y, from_logits=None), TypeError, "from_logits must be a bool"),
    (lambda: jl.generalized_dice_loss(X, Y, reduction="batchmean"), ValueError, "reduction"),
    (lambda: jl.dice_loss(X[:, :0], Y), ValueError, "predictions must have at least one class"),
    (lambda: jl.dice_loss(X, np.array([1j, 2j])), TypeError, "targets must be class indices"),
]


@pytest.mark.parametrize("index", range(len(BAD_CALLS)))
def test_bad_arguments_raise_naming_them(index):
    call, error, message = BAD_CALLS[index]
    with pytest.raises(error, match=re.escape(message)):
        call()


def test_one_class_with_index_targets_is_refused():
    """With one class every index would be class 0: a 0/1 label 1 is not silently
    read as a mask."""
    with pytest.raises(ValueError, match="with one class"):
        jl.dice_loss(jnp.array([[0.3], [0.2]]), jnp.array([1, 0]))
    masks = jnp.array([[1.0], [0.0]])
    binary = jl.dice_loss(jnp.array([0.3, 0.2]), masks[:, 0], axis=None)
    np.testing.assert_allclose(jl.dice_loss(jnp.array([[0.3], [0.2]]), masks), binary)
