"""Misuse fails at trace time with a ValueError/TypeError that names the argument."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxloss as jl

X = jnp.zeros((4, 3))
Y = jnp.array([0, 1, 2, 0])
P = jnp.full((4, 3), 1 / 3)

CASES = [
    (
        "int targets of logits shape",
        lambda: jl.cross_entropy(X, jnp.zeros((4, 3), int)),
        ValueError,
        r"targets.*probabilit.*must be floating",
    ),
    (
        "float targets of index shape",
        lambda: jl.cross_entropy(X, jnp.zeros(4)),
        ValueError,
        r"targets.*must have the logits' shape.*integer dtype",
    ),
    (
        "batch shape mismatch",
        lambda: jl.cross_entropy(X, jnp.zeros(5, int)),
        ValueError,
        r"targets.*shape \(4,\)",
    ),
    (
        "probability shape mismatch",
        lambda: jl.cross_entropy(X, jnp.zeros((4, 2))),
        ValueError,
        r"targets.*logits' shape \(4, 3\)",
    ),
    (
        "bool targets",
        lambda: jl.cross_entropy(X, jnp.zeros(4, bool)),
        TypeError,
        r"targets must be integer class indices or floating",
    ),
    (
        "weight length",
        lambda: jl.cross_entropy(X, Y, weight=jnp.ones(4)),
        ValueError,
        r"weight must have shape \(3,\)",
    ),
    (
        "weight rank",
        lambda: jl.cross_entropy(X, Y, weight=jnp.ones((1, 3))),
        ValueError,
        r"weight must have shape \(3,\)",
    ),
    (
        "focal alpha length",
        lambda: jl.softmax_focal_loss(X, Y, alpha=jnp.ones(4)),
        ValueError,
        r"^alpha must have shape \(3,\)",
    ),
    (
        "integer weight",
        lambda: jl.cross_entropy(X, Y, weight=jnp.ones(3, int)),
        TypeError,
        r"weight must have a floating dtype",
    ),
    (
        "unknown reduction",
        lambda: jl.cross_entropy(X, Y, reduction="avg"),
        ValueError,
        r"reduction must be one of",
    ),
    (
        "batchmean outside kl_div",
        lambda: jl.nll_loss(X, Y, reduction="batchmean"),
        ValueError,
        r"reduction must be one of",
    ),
    (
        "label_smoothing above 1",
        lambda: jl.cross_entropy(X, Y, label_smoothing=1.5),
        ValueError,
        r"label_smoothing must be in \[0, 1\]",
    ),
    (
        "label_smoothing below 0",
        lambda: jl.cross_entropy(X, Y, label_smoothing=-0.1),
        ValueError,
        r"label_smoothing must be in \[0, 1\]",
    ),
    (
        "label_smoothing vector",
        lambda: jl.cross_entropy(X, Y, label_smoothing=jnp.ones(2)),
        ValueError,
        r"label_smoothing must be a scalar",
    ),
    (
        "axis out of range",
        lambda: jl.cross_entropy(X, Y, axis=2),
        ValueError,
        r"axis 2 is out of bounds",
    ),
    ("axis not an int", lambda: jl.log_softmax(X, axis=1.0), TypeError, r"axis must be an int"),
    (
        "integer logits",
        lambda: jl.cross_entropy(jnp.zeros((4, 3), int), Y),
        TypeError,
        r"logits must have a floating dtype",
    ),
    (
        "scalar logits",
        lambda: jl.cross_entropy(jnp.float32(1.0), jnp.int32(0)),
        ValueError,
        r"logits must have at least 1 dimension",
    ),
    (
        "ignore_index with probabilities",
        lambda: jl.cross_entropy(X, P, ignore_index=0),
        ValueError,
        r"ignore_index only applies to class-index targets",
    ),
    (
        "ignore_index not an int",
        lambda: jl.cross_entropy(X, Y, ignore_index=0.5),
        TypeError,
        r"ignore_index must be a Python int",
    ),
    (
        "pos_weight not broadcastable",
        lambda: jl.binary_cross_entropy_with_logits(X, P, pos_weight=jnp.ones(4)),
        ValueError,
        r"pos_weight of shape \(4,\) does not broadcast",
    ),
    (
        "bce weight that would grow the result",
        lambda: jl.binary_cross_entropy_with_logits(X, P, weight=jnp.ones((2, 4, 3))),
        ValueError,
        r"weight of shape \(2, 4, 3\) does not broadcast",
    ),
    (
        "bce integer targets",
        lambda: jl.binary_cross_entropy_with_logits(X, jnp.zeros((4, 3), int)),
        TypeError,
        r"targets must be floating",
    ),
    (
        "bce shape mismatch",
        lambda: jl.binary_cross_entropy(P, jnp.zeros((4, 1))),
        ValueError,
        r"targets must have the probs' shape",
    ),
    (
        "nll float targets",
        lambda: jl.nll_loss(X, jnp.zeros(4)),
        TypeError,
        r"nll_loss takes integer class-index targets",
    ),
    (
        "kl shape mismatch",
        lambda: jl.kl_div(X, jnp.zeros((4, 1))),
        ValueError,
        r"target must have log_input's shape",
    ),
    (
        "kl unknown reduction",
        lambda: jl.kl_div(X, P, reduction="average"),
        ValueError,
        r"reduction must be one of",
    ),
    (
        "where not bool",
        lambda: jl.cross_entropy(X, Y, where=jnp.ones(3)),
        TypeError,
        r"where must be a boolean mask",
    ),
    (
        "where not broadcastable",
        lambda: jl.softmax(X, where=jnp.ones(4, bool)),
        ValueError,
        r"where of shape \(4,\) does not broadcast",
    ),
    (
        "negative z_loss",
        lambda: jl.cross_entropy(X, Y, z_loss=-1.0),
        ValueError,
        r"z_loss must be >= 0",
    ),
    (
        "zero softcap",
        lambda: jl.cross_entropy(X, Y, logit_softcap=0.0),
        ValueError,
        r"logit_softcap must be > 0",
    ),
    ("list logits", lambda: jl.softmax("abc"), TypeError, r"x must"),
    (
        "None logits",
        lambda: jl.cross_entropy(None, Y),
        TypeError,
        r"logits must be an array, got None",
    ),
    (
        "None targets",
        lambda: jl.cross_entropy(X, None),
        TypeError,
        r"targets must be an array, got None",
    ),
    ("None x", lambda: jl.log_softmax(None), TypeError, r"x must be an array, got None"),
    (
        "None w",
        lambda: jl.linear_cross_entropy(X, None, Y),
        TypeError,
        r"w must be an array, got None",
    ),
    (
        "ragged logits",
        lambda: jl.cross_entropy([[1.0, 2.0], [3.0]], [0, 1]),
        ValueError,
        r"logits must be a rectangular array",
    ),
    (
        "ragged targets",
        lambda: jl.binary_cross_entropy_with_logits(X, [[0.0, 1.0], [1.0]]),
        ValueError,
        r"targets must be a rectangular array",
    ),
    (
        "object array",
        lambda: jl.kl_div(X, [[0.1, None, 0.2]] * 4),
        ValueError,
        r"target must be a rectangular array of numbers",
    ),
    (
        "infinite softcap",
        lambda: jl.cross_entropy(X, Y, logit_softcap=float("inf")),
        ValueError,
        r"logit_softcap must be > 0 and finite, got inf",
    ),
    (
        "nan softcap",
        lambda: jl.cross_entropy(X, Y, logit_softcap=float("nan")),
        ValueError,
        r"logit_softcap must be > 0 and finite, got nan",
    ),
    (
        "negative softcap",
        lambda: jl.linear_cross_entropy(X, jnp.ones((3, 5)), Y, logit_softcap=-1.0),
        ValueError,
        r"logit_softcap must be > 0",
    ),
    (
        "infinite z_loss",
        lambda: jl.cross_entropy(X, Y, z_loss=float("inf")),
        ValueError,
        r"z_loss must be >= 0 and finite, got inf",
    ),
    (
        "nan label_smoothing",
        lambda: jl.cross_entropy(X, Y, label_smoothing=float("nan")),
        ValueError,
        r"label_smoothing must be in \[0, 1\], got nan",
    ),
    (
        "bool label_smoothing",
        lambda: jl.cross_entropy(X, Y, label_smoothing=True),
        TypeError,
        r"label_smoothing must be a real number, got True",
    ),
    (
        "string z_loss",
        lambda: jl.cross_entropy(X, Y, z_loss="0.1"),
        TypeError,
        r"z_loss must be a real number",
    ),
    (
        "no classes",
        lambda: jl.cross_entropy(jnp.zeros((4, 0)), jnp.zeros(4, int)),
        ValueError,
        r"logits must have at least one class along axis 1",
    ),
    (
        "no classes, nll",
        lambda: jl.nll_loss(jnp.zeros((0, 4)), jnp.zeros(4, int), axis=0),
        ValueError,
        r"log_probs must have at least one class along axis 0",
    ),
    (
        "empty vocabulary",
        lambda: jl.linear_cross_entropy(X, jnp.zeros((3, 0)), Y),
        ValueError,
        r"w must have at least one vocabulary entry",
    ),
    (
        "int64 targets beyond int32 without x64",
        lambda: jl.cross_entropy(X, np.array([0, 1, 2**33, 0], np.int64)),
        ValueError,
        r"targets holds int64 values in \[0, 8589934592\], outside the range of int32",
    ),
    (
        "Python int beyond int64",
        lambda: jl.nll_loss(X, [0, 1, 2**70, 0]),
        ValueError,
        r"targets must be a rectangular array of numbers.*integer beyond 64 bits",
    ),
    (
        "None ignore_index",
        lambda: jl.cross_entropy(X, Y, ignore_index=None),
        TypeError,
        r"ignore_index must be a Python int, got None",
    ),
    (
        "None reduction",
        lambda: jl.kl_div(X, P, reduction=None),
        ValueError,
        r"reduction must be one of",
    ),
]


@pytest.mark.parametrize("call, error, pattern", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_a_named_error(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


def test_errors_are_raised_while_tracing_not_at_run_time():
    traced = jax.jit(lambda x, t: jl.cross_entropy(x, t, weight=jnp.ones(5)))
    with pytest.raises(ValueError, match="weight must have shape"):
        traced.lower(X, Y)


def test_python_number_options_are_range_checked_inside_jit():
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\]"):
        jax.jit(lambda x: jl.cross_entropy(x, Y, label_smoothing=1.5))(X)
    with pytest.raises(ValueError, match="logit_softcap must be > 0"):
        jax.jit(lambda x: jl.cross_entropy(x, Y, logit_softcap=-2.0))(X)


def test_traced_label_smoothing_is_accepted_without_a_range_check():
    loss = jax.jit(lambda e: jl.cross_entropy(X, Y, label_smoothing=e))(0.5)
    assert jnp.isfinite(loss)
