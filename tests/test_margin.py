"""The margin losses: float64 values and gradients against PyTorch 2.13 and optax over
random shapes and options, the subgradient at each kink, second derivatives where the
loss has them, extreme scores, low precision, and errors that name the argument."""

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
REDUCTIONS = ["mean", "sum", "none"]


def _ours(fn, x, *args, **kwargs):
    """Value and gradient (of the sum) with respect to the first argument, float64."""
    with jax.enable_x64(True):
        x = jnp.asarray(x, jnp.float64)
        value = fn(x, *args, **kwargs)
        grad = jax.grad(lambda x: jnp.sum(fn(x, *args, **kwargs)))(x)
    return np.asarray(value), np.asarray(grad)


def _torch(name, x, *args, **kwargs):
    torch = pytest.importorskip("torch")
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    convert = lambda a: torch.tensor(a) if isinstance(a, np.ndarray) else a  # noqa: E731
    kwargs = {k: convert(v) for k, v in kwargs.items()}
    value = getattr(torch.nn.functional, name)(xt, *map(convert, args), **kwargs)
    value.sum().backward()
    return value.detach().numpy(), xt.grad.numpy()


def _same(ours, theirs, rtol=1e-12):
    for got, want in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=1e-13)


def _scores(rng, batch, classes):
    # Distinct scores a little apart, so that no pair sits within rounding of a kink.
    return rng.permutation(batch * classes).reshape(batch, classes) * 0.37 / classes - 1.0


@SETTINGS
@hypothesis.given(
    seed=st.integers(0, 2**16),
    batch=st.integers(1, 5),
    classes=st.integers(1, 6),
    p=st.sampled_from([1, 2]),
    margin=st.sampled_from([1.0, 0.3, 2.5]),
    weighted=st.booleans(),
    reduction=st.sampled_from(REDUCTIONS),
)
def test_multi_margin_loss_matches_pytorch(seed, batch, classes, p, margin, weighted, reduction):
    rng = np.random.default_rng(seed)
    x = _scores(rng, batch, classes)
    y = rng.integers(0, classes, size=batch)
    w = rng.uniform(0.2, 2.0, size=classes) if weighted else None
    kwargs = {"p": p, "margin": margin, "weight": w, "reduction": reduction}
    _same(_ours(jl.multi_margin_loss, x, y, **kwargs), _torch("multi_margin_loss", x, y, **kwargs))


@SETTINGS
@hypothesis.given(
    seed=st.integers(0, 2**16),
    batch=st.integers(1, 5),
    classes=st.integers(1, 6),
    reduction=st.sampled_from(REDUCTIONS),
)
def test_multilabel_margin_loss_matches_pytorch(seed, batch, classes, reduction):
    rng = np.random.default_rng(seed)
    x = _scores(rng, batch, classes)
    # Lists of targets (repeats allowed), ended by -1 and followed by anything.
    y = rng.integers(0, classes, size=(batch, classes))
    ends = rng.integers(0, classes + 1, size=batch)
    y[np.arange(classes) == ends[:, None]] = -1
    kwargs = {"reduction": reduction}
    _same(
        _ours(jl.multilabel_margin_loss, x, y, **kwargs),
        _torch("multilabel_margin_loss", x, y, **kwargs),
    )


@SETTINGS
@hypothesis.given(
    seed=st.integers(0, 2**16),
    shape=st.sampled_from([(3, 4), (1, 1), (5, 2), (2, 3, 4)]),
    weighted=st.booleans(),
    reduction=st.sampled_from(REDUCTIONS),
)
def test_multilabel_soft_margin_and_soft_margin_match_pytorch(seed, shape, weighted, reduction):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape) * 3.0
    t = rng.uniform(size=shape).round()
    w = rng.uniform(0.2, 2.0, size=shape[-1]) if weighted else None
    _same(
        _ours(jl.multilabel_soft_margin_loss, x, t, weight=w, reduction=reduction),
        _torch("multilabel_soft_margin_loss", x, t, weight=w, reduction=reduction),
    )
    signs = 2.0 * t - 1.0
    _same(
        _ours(jl.soft_margin_loss, x, signs, reduction=reduction),
        _torch("soft_margin_loss", x, signs, reduction=reduction),
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("margin", [1.0, 0.5, -0.2])
def test_hinge_embedding_loss_matches_pytorch_at_every_target(reduction, margin):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 5))
    t = rng.choice([1.0, -1.0, 0.0, 2.0], size=(4, 5))  # PyTorch extends to other values
    _same(
        _ours(jl.hinge_embedding_loss, x, t, margin=margin, reduction=reduction),
        _torch("hinge_embedding_loss", x, t, margin=margin, reduction=reduction),
    )


OPTAX = {
    "hinge_loss": ("hinge_loss", "binary"),
    "perceptron_loss": ("perceptron_loss", "binary"),
    "multiclass_hinge_loss": ("multiclass_hinge_loss", "labels"),
    "multiclass_perceptron_loss": ("multiclass_perceptron_loss", "labels"),
}


@pytest.mark.exhaustive(quick_cases=4)
@pytest.mark.parametrize("name", OPTAX)
@pytest.mark.parametrize("seed", [0, 1])
def test_optax_margin_losses_match_away_from_kinks(name, seed):
    optax = pytest.importorskip("optax")
    theirs_fn = getattr(optax.losses, OPTAX[name][0])
    rng = np.random.default_rng(seed)
    x = _scores(rng, 6, 5) + 0.0123  # no score at a kink (|t x| = 1 or 0)
    y = (
        rng.integers(0, 5, size=6)
        if OPTAX[name][1] == "labels"
        else rng.choice([-1.0, 1.0], x.shape)
    )
    ours = _ours(getattr(jl, name), x, y, reduction="none")
    with jax.enable_x64(True):
        theirs = (
            theirs_fn(jnp.asarray(x), jnp.asarray(y)),
            jax.grad(lambda x: jnp.sum(theirs_fn(x, jnp.asarray(y))))(jnp.asarray(x)),
        )
    _same(ours, tuple(map(np.asarray, theirs)))


def test_subgradients_at_the_kinks_are_pytorchs():
    # multi_margin: z = 1 - x_y + x_1 = 0 exactly adds nothing; hinge_embedding: at
    # x = margin for a -1 target the slope is -1; multilabel_margin: a pair at 0 adds
    # nothing.
    x = np.array([[1.0, 0.0, 0.5]])
    for p in (1, 2):
        kink = (x, np.array([0]))
        _same(_ours(jl.multi_margin_loss, *kink, p=p), _torch("multi_margin_loss", *kink, p=p))
        assert _ours(jl.multi_margin_loss, *kink, p=p)[1][0, 1] == 0.0
    targets = np.array([[-1.0, -1.0, 1.0]])
    ours = _ours(jl.hinge_embedding_loss, x, targets, reduction="sum")
    _same(ours, _torch("hinge_embedding_loss", x, targets, reduction="sum"))
    assert ours[1][0, 0] == -1.0
    lists = np.array([[0, -1, 2]])
    ours = _ours(jl.multilabel_margin_loss, x, lists)
    _same(ours, _torch("multilabel_margin_loss", x, lists))
    assert ours[1][0, 1] == 0.0


@pytest.mark.exhaustive
def test_optax_kinks_split_where_ours_take_a_side():
    optax = pytest.importorskip("optax")
    t = jnp.array([1.0, -1.0])
    for name, x in [("hinge_loss", jnp.array([1.0, -1.0])), ("perceptron_loss", jnp.zeros(2))]:
        theirs = jax.grad(lambda x: jnp.sum(getattr(optax.losses, name)(x, t)))(x)
        np.testing.assert_array_equal(theirs, -t / 2)
        assert np.all(jax.grad(getattr(jl, name))(x, t) == 0.0)
    # A tie between the target and another class at the maximum: optax shares the
    # gradient between them, ours is 0 (the margin is just met).
    x, y = jnp.array([[2.0, 1.0, 0.0]]), jnp.array([0])
    for name, scores in [
        ("multiclass_hinge_loss", x),
        ("multiclass_perceptron_loss", x.at[0, 1].set(2.0)),
    ]:
        theirs = jax.grad(lambda s: jnp.sum(getattr(optax.losses, name)(s, y)))(scores)
        assert np.any(theirs != 0.0)
        assert np.all(jax.grad(getattr(jl, name))(scores, y) == 0.0)


LABELS = jnp.array([0, 3, 1])
SMOOTH = {
    "multi_margin_loss p=2": lambda x: jl.multi_margin_loss(x, LABELS, p=2, margin=0.4),
    "multilabel_soft_margin_loss": lambda x: jl.multilabel_soft_margin_loss(
        x, jnp.float32(LABELS[:, None] == jnp.arange(4))
    ),
    "soft_margin_loss": lambda x: jl.soft_margin_loss(x, jnp.where(x > 0, 1.0, -1.0)[::-1]),
}


@pytest.mark.exhaustive
@pytest.mark.parametrize("name", SMOOTH)
def test_second_derivatives_against_finite_differences(x64, name):
    x = jnp.asarray(_scores(np.random.default_rng(1), 3, 4))
    check_grads(jax.jit(SMOOTH[name]), (x,), order=2, modes=("fwd", "rev"))


FIRST_ORDER = {
    "multi_margin_loss": lambda x: jl.multi_margin_loss(x, jnp.array([0, 3, 1]), margin=0.5),
    "multilabel_margin_loss": lambda x: jl.multilabel_margin_loss(
        x, jnp.array([[0, 2, -1, 0]] * 3)
    ),
    "hinge_embedding_loss": lambda x: jl.hinge_embedding_loss(x, jnp.sign(x[::-1])),
    "hinge_loss": lambda x: jl.hinge_loss(x, jnp.sign(x[::-1])),
    "perceptron_loss": lambda x: jl.perceptron_loss(x, jnp.sign(x[::-1])),
    "multiclass_hinge_loss": lambda x: jl.multiclass_hinge_loss(x, jnp.array([0, 3, 1])),
    "multiclass_perceptron_loss": lambda x: jl.multiclass_perceptron_loss(x, jnp.array([0, 3, 1])),
}


@pytest.mark.exhaustive(quick_cases=2)
@pytest.mark.parametrize("name", FIRST_ORDER)
def test_first_derivatives_against_finite_differences(x64, name):
    # Scores spaced more than the finite-difference step away from every kink.
    x = jnp.asarray(_scores(np.random.default_rng(2), 3, 4) + 0.011)
    check_grads(jax.jit(FIRST_ORDER[name]), (x,), order=1, modes=("fwd", "rev"), eps=1e-4)


ALL = {**FIRST_ORDER, **SMOOTH}


@pytest.mark.exhaustive(quick_cases=1)
@pytest.mark.parametrize("name", ALL)
def test_extreme_scores_give_finite_losses_and_gradients(name):
    x = jnp.array([[1e4, -1e4, 0.5, -3.0]] * 3)
    value, grad = jax.value_and_grad(ALL[name])(x)
    assert np.isfinite(value) and np.all(np.isfinite(grad))


def test_soft_margin_stays_finite_where_pytorch_overflows():
    x, t = np.array([-1e4, 800.0, 3.0]), np.array([1.0, -1.0, 1.0])
    theirs = _torch("soft_margin_loss", x, t, reduction="none")[0]
    ours = _ours(jl.soft_margin_loss, x, t, reduction="none")[0]
    assert np.all(np.isinf(theirs[:2])) and np.isclose(theirs[2], ours[2], rtol=1e-14)
    np.testing.assert_allclose(ours[:2], [1e4, 800.0], rtol=1e-14)


@pytest.mark.exhaustive(quick_cases=2)
@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_is_accumulated_in_float32(name, dtype):
    x = jnp.asarray(_scores(np.random.default_rng(3), 3, 4) + 0.011, dtype)
    value, grad = jax.value_and_grad(ALL[name])(x)
    want, want_grad = jax.value_and_grad(ALL[name])(x.astype(jnp.float32))
    assert value.dtype == dtype and grad.dtype == dtype
    np.testing.assert_allclose(np.float32(value), want, rtol=float(jnp.finfo(dtype).eps))
    np.testing.assert_allclose(np.float32(grad), want_grad, atol=float(jnp.finfo(dtype).eps))


def test_targets_outside_the_classes_are_nan_for_their_element():
    x = jnp.asarray(_scores(np.random.default_rng(4), 3, 4))
    y = jnp.array([0, 4, -1])
    for fn in (jl.multi_margin_loss, jl.multiclass_hinge_loss, jl.multiclass_perceptron_loss):
        loss = fn(x, y, reduction="none")
        assert np.isfinite(loss[0]) and np.all(np.isnan(loss[1:]))
    lists = jnp.array([[0, -1, 9, 9], [0, 5, -1, 0], [-2, 0, 1, -1]])
    loss = jl.multilabel_margin_loss(x, lists, reduction="none")
    assert np.isfinite(loss[0]) and np.all(np.isnan(loss[1:]))


X, Y = np.zeros((2, 3), np.float32), np.array([0, 1])
BAD_CALLS = [
    (lambda: jl.multi_margin_loss(X.astype(int), Y), TypeError, "scores must have a floating"),
    (lambda: jl.multi_margin_loss(X, Y[:1]), ValueError, "targets must have shape (2,)"),
    (lambda: jl.multi_margin_loss(X, Y * 1.0), TypeError, "targets must hold integer"),
    (lambda: jl.multi_margin_loss(X, Y, p=3), ValueError, "p must be 1 or 2"),
    (
        lambda: jl.multi_margin_loss(X, Y, weight=np.ones(2)),
        ValueError,
        "weight must have shape (3,)",
    ),
    (lambda: jl.multi_margin_loss(X, Y, margin=np.inf), ValueError, "margin must be"),
    (lambda: jl.multi_margin_loss(X[:, :0], Y), ValueError, "scores"),
    (lambda: jl.multilabel_margin_loss(X, Y), ValueError, "targets must have the scores' shape"),
    (lambda: jl.multilabel_margin_loss(X, X), TypeError, "targets must hold integer"),
    (
        lambda: jl.multilabel_soft_margin_loss(X, X.astype(bool)),
        TypeError,
        "targets must be real numbers (in [0, 1])",
    ),
    (
        lambda: jl.multilabel_soft_margin_loss(X, X, weight=np.ones(2)),
        ValueError,
        "weight of shape",
    ),
    (lambda: jl.soft_margin_loss(X, X[0]), ValueError, "targets must have the scores' shape"),
    (lambda: jl.hinge_embedding_loss(X, X, margin="1"), TypeError, "margin must be a real"),
    (lambda: jl.hinge_loss(X, X, reduction="batchmean"), ValueError, "reduction must be"),
    (lambda: jl.perceptron_loss(X, X.astype(bool)), TypeError, "targets must be real"),
    (lambda: jl.multiclass_hinge_loss(X, X), TypeError, "labels must hold integer"),
]


@pytest.mark.parametrize("index", range(len(BAD_CALLS)))
def test_bad_arguments_raise_naming_them(index):
    call, error, message = BAD_CALLS[index]
    with pytest.raises(error, match=re.escape(message)):
        call()
