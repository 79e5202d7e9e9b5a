"""docs/pytorch.md's tables of edges, each row run against PyTorch and jaxloss.

Every row of the two tables ("Where jaxloss deliberately differs", "Where they agree")
has one check here, keyed by the row's first cell, that asserts both the PyTorch column
(by running PyTorch) and the jaxloss column. A row without a check, or a check without
a row, fails ``test_every_table_row_has_a_check``. The checks skip when PyTorch is not
installed; the test extra installs it.
"""

import pathlib
import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxloss as jl

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "pytorch.md"
TABLES = ("## Where jaxloss deliberately differs", "## Where they agree")
INF, NAN = float("inf"), float("nan")


def table_rows(text: str, heading: str) -> list[str]:
    """First cells of the markdown table under ``heading``."""
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    return [row.split(" | ")[0][2:].strip() for row in rows[1:]]  # skip the header


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


_ROWS = []


def row(situation):
    """Registers a check for the table row whose first cell is ``situation``."""

    def register(check):
        _ROWS.append((check, situation))
        return check

    return register


def _t(torch, value, dtype=None):
    return torch.tensor(value, dtype=dtype or torch.float32)


def _raises(fn, error):
    try:
        fn()
    except error as err:
        return str(err)
    raise AssertionError(f"expected {error.__name__}")


@row('`reduction="mean"` when every target is `ignore_index` or has class weight 0')
def all_ignored(torch):
    F = torch.nn.functional
    x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    assert np.isnan(F.cross_entropy(_t(torch, x), torch.full((3,), -100)).item())
    w = _t(torch, [0.0, 1.0, 1.0, 1.0])
    assert np.isnan(
        F.cross_entropy(_t(torch, x), torch.zeros(3, dtype=torch.long), weight=w).item()
    )
    for targets, kwargs in [(jnp.full((3,), -100), {}), (jnp.zeros(3, int), {"weight": w.numpy()})]:
        loss, grad = jax.value_and_grad(jl.cross_entropy)(x, targets, **kwargs)
        assert loss == 0.0 and np.all(np.asarray(grad) == 0.0)


@row('`reduction="mean"` over zero elements (an empty batch)')
def empty_batch(torch):
    F = torch.nn.functional
    empty = torch.zeros(0, 3)
    index = torch.zeros(0, dtype=torch.long)
    pairs = [
        (F.cross_entropy, jl.cross_entropy, (empty, index)),
        (F.cross_entropy, jl.cross_entropy, (empty, empty)),
        (F.nll_loss, jl.nll_loss, (empty, index)),
        (F.binary_cross_entropy_with_logits, jl.binary_cross_entropy_with_logits, (empty, empty)),
        (F.binary_cross_entropy, jl.binary_cross_entropy, (empty, empty)),
        (F.kl_div, jl.kl_div, (empty, empty)),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # kl_div's note about "mean"
        for theirs, ours, args in pairs:
            mine = tuple(jnp.asarray(a.numpy()) for a in args)
            assert np.isnan(theirs(*args).item())
            assert ours(*mine) == 0.0
            assert (
                theirs(*args, reduction="sum").item() == 0.0 and ours(*mine, reduction="sum") == 0
            )
            assert theirs(*args, reduction="none").numel() == 0
            assert ours(*mine, reduction="none").size == 0
        assert np.isnan(F.kl_div(empty, empty, reduction="batchmean").item())
    assert jl.kl_div(jnp.zeros((0, 3)), jnp.zeros((0, 3)), reduction="batchmean") == 0.0


@row("a logit of `-inf` (or a class masked by `where`) with `label_smoothing > 0`")
def minus_inf_with_smoothing(torch):
    F = torch.nn.functional
    x = [[-INF, 0.0, 1.0]]
    assert F.cross_entropy(_t(torch, x), torch.tensor([1]), label_smoothing=0.1).item() == INF
    ours = jl.cross_entropy(jnp.array(x), jnp.array([1]), label_smoothing=0.1)
    want = jl.cross_entropy(jnp.array([[0.0, 1.0]]), jnp.array([0]), label_smoothing=0.1)
    np.testing.assert_allclose(ours, want, rtol=1e-6)


@row("a probability target of 0 on a class whose logit is `-inf`")
def zero_target_on_minus_inf(torch):
    F = torch.nn.functional
    x, t = [[-INF, 0.0, 1.0]], [[0.0, 0.5, 0.5]]
    assert np.isnan(F.cross_entropy(_t(torch, x), _t(torch, t)).item())
    ours = jl.cross_entropy(jnp.array(x), jnp.array(t))
    want = jl.cross_entropy(jnp.array([[0.0, 1.0]]), jnp.array([[0.5, 0.5]]))
    np.testing.assert_allclose(ours, want, rtol=1e-6)


@row("an index target outside `[0, C)` that is not `ignore_index`")
def index_out_of_range(torch):
    F = torch.nn.functional
    _raises(lambda: F.cross_entropy(torch.zeros(2, 3), torch.tensor([0, 3])), IndexError)
    x = jnp.zeros((2, 3))
    per = jl.cross_entropy(x, jnp.array([0, 3]), reduction="none")
    grad = jax.grad(lambda v: jl.cross_entropy(v, jnp.array([0, 3]), reduction="sum"))(x)
    assert np.isfinite(per[0]) and np.isnan(per[1])
    assert np.all(np.isfinite(grad[0])) and np.all(np.isnan(grad[1]))


@row("`probs` or `targets` outside `[0, 1]`, or `nan`, in `binary_cross_entropy`")
def bce_out_of_range(torch):
    F = torch.nn.functional
    cases = [([1.5], [1.0]), ([-0.5], [1.0]), ([NAN], [1.0]), ([0.3], [1.5]), ([0.3], [-0.5])]
    cases.append(([0.3], [NAN]))
    for p, t in cases:
        message = _raises(lambda: F.binary_cross_entropy(_t(torch, p), _t(torch, t)), RuntimeError)
        assert "should be between 0 and 1" in message
        loss, grad = jax.value_and_grad(jl.binary_cross_entropy)(jnp.array(p), jnp.array(t))
        assert np.isnan(loss) and np.isnan(grad[0])


@row("gradient of `binary_cross_entropy` at a clamped point ($p$ within ~1e-44 of 0 or 1)")
def bce_clamped_gradient(torch):
    p = torch.tensor([0.0], requires_grad=True)
    torch.nn.functional.binary_cross_entropy(p, torch.tensor([1.0])).backward()
    assert p.grad.item() == np.float32(-1e12)  # -1 / max(p (1 - p), 1e-12)
    assert jax.grad(jl.binary_cross_entropy)(jnp.array([0.0]), jnp.array([1.0]))[0] == 0.0


@row(
    "float32 `binary_cross_entropy` with $p$ below the smallest normal float (~1.2e-38), on XLA:CPU"
)
def bce_subnormal_probability(torch):
    p = torch.tensor([1e-40], requires_grad=True)
    loss = torch.nn.functional.binary_cross_entropy(p, torch.tensor([1.0]))
    loss.backward()
    np.testing.assert_allclose(loss.item(), 92.1034, rtol=1e-5)
    if jax.default_backend() != "cpu":
        pytest.skip("the flush of subnormal numbers is XLA:CPU's")
    args = (jnp.array([1e-40], jnp.float32), jnp.array([1.0], jnp.float32))
    assert jl.binary_cross_entropy(*args) == 100.0
    assert jax.grad(jl.binary_cross_entropy)(*args)[0] == 0.0
    with jax.enable_x64(True):
        wide = (jnp.array([1e-40], jnp.float64), jnp.array([1.0], jnp.float64))
        np.testing.assert_allclose(jl.binary_cross_entropy(*wide), 92.1034037, rtol=1e-8)


@row("`nan` logits of an element whose target is `ignore_index`")
def nan_logits_ignored(torch):
    F = torch.nn.functional
    x = [[NAN, 0.0, 1.0], [0.0, 1.0, 2.0]]
    tx = _t(torch, x).requires_grad_()
    loss = F.cross_entropy(tx, torch.tensor([-100, 0]), reduction="none")
    assert loss[0].item() == 0.0
    loss.sum().backward()
    assert torch.isnan(tx.grad[0]).all()
    per = jl.cross_entropy(jnp.array(x), jnp.array([-100, 0]), reduction="none")
    grad = jax.grad(lambda v: jl.cross_entropy(v, jnp.array([-100, 0])))(jnp.array(x))
    assert per[0] == 0.0 and np.all(np.asarray(grad[0]) == 0.0) and np.all(np.isfinite(grad))


@row("`nan` logits of an element whose class weight is 0 (without smoothing or z-loss)")
def nan_logits_zero_weight(torch):
    F = torch.nn.functional
    x, y, w = [[NAN, 0.0, 1.0], [0.0, 1.0, 2.0]], [0, 1], [0.0, 1.0, 1.0]
    per = F.cross_entropy(_t(torch, x), torch.tensor(y), weight=_t(torch, w), reduction="none")
    assert torch.isnan(per[0])
    ours = jl.cross_entropy(jnp.array(x), jnp.array(y), weight=jnp.array(w), reduction="none")
    grad = jax.grad(lambda v: jl.cross_entropy(v, jnp.array(y), weight=jnp.array(w)))(jnp.array(x))
    assert ours[0] == 0.0 and np.all(np.asarray(grad[0]) == 0.0) and np.all(np.isfinite(grad))


@row("`nan` logit of an element whose `weight` is 0 in `binary_cross_entropy_with_logits`")
def bce_nan_zero_weight(torch):
    F = torch.nn.functional
    x, t, w = [NAN, 0.3], [1.0, 0.0], [0.0, 1.0]
    theirs = F.binary_cross_entropy_with_logits(
        _t(torch, x), _t(torch, t), weight=_t(torch, w), reduction="none"
    )
    assert torch.isnan(theirs[0])
    loss, grad = jax.value_and_grad(
        lambda v: jl.binary_cross_entropy_with_logits(v, jnp.array(t), weight=jnp.array(w))
    )(jnp.array(x))
    assert np.isfinite(loss) and grad[0] == 0.0


@row("`binary_cross_entropy_with_logits` at a logit of `+inf` or `-inf` with a target of 0 or 1")
def bce_infinite_logits(torch):
    F = torch.nn.functional
    x, t = [INF, INF, -INF, -INF], [1.0, 0.0, 1.0, 0.0]
    theirs = F.binary_cross_entropy_with_logits(_t(torch, x), _t(torch, t), reduction="none")
    np.testing.assert_array_equal(theirs.numpy(), [NAN, INF, NAN, NAN])
    ours = jl.binary_cross_entropy_with_logits(jnp.array(x), jnp.array(t), reduction="none")
    np.testing.assert_array_equal(ours, [0.0, INF, INF, 0.0])
    grad = jax.grad(
        lambda v: jl.binary_cross_entropy_with_logits(v, jnp.array(t), reduction="sum")
    )(jnp.array(x))
    np.testing.assert_array_equal(grad, [0.0, 1.0, -1.0, 0.0])  # sigma(x) - t


@row(
    "`kl_div` where the target is 0 and `log_input` is `-inf` (also `log_target=True` with "
    "both `-inf`)"
)
def kl_zero_target(torch):
    F = torch.nn.functional
    log_q, t = [-INF, -0.5], [0.0, 0.5]
    assert torch.isnan(F.kl_div(_t(torch, log_q), _t(torch, t), reduction="none")[0])
    log_t = [-INF, -1.0]
    both = F.kl_div(_t(torch, log_q), _t(torch, log_t), reduction="none", log_target=True)
    assert torch.isnan(both[0])
    assert jl.kl_div(jnp.array(log_q), jnp.array(t), reduction="none")[0] == 0.0
    assert jl.kl_div(jnp.array(log_q), jnp.array(log_t), reduction="none", log_target=True)[0] == 0


@row("gradient of `kl_div` with respect to a target entry of 0")
def kl_gradient_at_zero_target(torch):
    F = torch.nn.functional
    for dtype, reduction in [(torch.float32, "none"), (torch.float64, "batchmean")]:
        t = torch.tensor([[0.0, 0.5, 0.5]], dtype=dtype, requires_grad=True)
        log_q = torch.tensor([[-1.0, -2.0, -0.5]], dtype=dtype)
        F.kl_div(log_q, t, reduction=reduction).sum().backward()
        assert torch.isnan(t.grad[0, 0]) and torch.isfinite(t.grad[0, 1:]).all()
    g = jax.grad(jl.kl_div, argnums=1)(
        jnp.array([[-1.0, -2.0, -0.5]]), jnp.array([[0.0, 0.5, 0.5]])
    )
    assert g[0, 0] == 0.0 and np.all(np.isfinite(g))


@row("`kl_div` target of another shape")
def kl_shape(torch):
    F = torch.nn.functional
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert F.kl_div(torch.zeros(2, 3), torch.full((1, 3), 0.5), reduction="none").shape == (
            2,
            3,
        )
    with pytest.raises(ValueError, match="target must have log_input's shape"):
        jl.kl_div(jnp.zeros((2, 3)), jnp.full((1, 3), 0.5))


@row("float16 elements whose loss exceeds 65504")
def float16_overflow(torch):
    F = torch.nn.functional
    x = [[6e4, -6e4, 0.0], [0.0, 0.0, 0.0]]
    y = [1, 0]
    theirs = F.cross_entropy(_t(torch, x, torch.float16), torch.tensor(y), reduction="none")
    assert theirs[0].item() == INF
    assert F.cross_entropy(_t(torch, x, torch.float16), torch.tensor(y)).item() == INF
    x16 = jnp.array(x, jnp.float16)
    assert jl.cross_entropy(x16, jnp.array(y), reduction="none")[0] == INF
    mean = jl.cross_entropy(x16, jnp.array(y))  # (1.2e5 + log 3) / 2 = 6.0e4 < 65504
    assert mean.dtype == jnp.float16 and np.isfinite(mean)
    np.testing.assert_allclose(float(mean), (1.2e5 + np.log(3)) / 2, rtol=1e-3)


@row("class weights that require a gradient")
def weight_gradient(torch):
    w = torch.ones(3, requires_grad=True)
    message = _raises(
        lambda: torch.nn.functional.cross_entropy(
            torch.zeros(2, 3), torch.tensor([0, 1]), weight=w
        ),
        RuntimeError,
    )
    assert "not differentiable with respect to argument 'weight'" in message
    x = jnp.array([[1.0, 2.0, 3.0], [0.5, 0.0, -1.0]])
    g = jax.grad(lambda v: jl.cross_entropy(x, jnp.array([0, 1]), weight=v))(jnp.ones(3))
    assert np.all(np.isfinite(g)) and np.any(np.asarray(g) != 0.0)


@row("class-index targets of dtype `int8`, `int16`, `int32` (or `uint16`, `uint32`)")
def integer_target_dtypes(torch):
    F = torch.nn.functional
    x = np.random.default_rng(1).normal(size=(3, 5)).astype(np.float32)
    want = jl.cross_entropy(x, jnp.array([0, 1, 4]))
    for torch_dtype, np_dtype in [
        (torch.int8, np.int8),
        (torch.int16, np.int16),
        (torch.int32, np.int32),
    ]:
        message = _raises(
            lambda: F.cross_entropy(_t(torch, x), torch.tensor([0, 1, 4], dtype=torch_dtype)),
            RuntimeError,
        )
        assert "Long or Byte" in message
        assert jl.cross_entropy(x, np.array([0, 1, 4], np_dtype)) == want
    for np_dtype in (np.uint16, np.uint32):
        assert jl.cross_entropy(x, np.array([0, 1, 4], np_dtype)) == want


@row("logits with no classes (class axis of length 0)")
def no_classes(torch):
    _raises(
        lambda: torch.nn.functional.cross_entropy(
            torch.zeros(2, 0), torch.zeros(2, dtype=torch.long)
        ),
        IndexError,
    )
    with pytest.raises(ValueError, match="logits must have at least one class"):
        jl.cross_entropy(jnp.zeros((2, 0)), jnp.zeros(2, int))


@row(
    "a logit of `+inf` in a counted element of `cross_entropy` (target class or not), or in "
    "`log_softmax`/`softmax`"
)
def plus_inf_logit(torch):
    F = torch.nn.functional
    x = [[INF, 0.0, 1.0], [INF, 0.0, 1.0], [0.0, 1.0, 2.0]]
    y = [0, 1, 2]
    theirs = F.cross_entropy(_t(torch, x), torch.tensor(y), reduction="none")
    assert torch.isnan(theirs[:2]).all() and torch.isfinite(theirs[2])
    assert torch.isnan(F.log_softmax(_t(torch, x[0]), 0)).all()
    assert torch.isnan(F.softmax(_t(torch, x[0]), 0)).all()
    ours = jl.cross_entropy(jnp.array(x), jnp.array(y), reduction="none")
    assert np.all(np.isnan(ours[:2])) and np.isfinite(ours[2])
    assert np.all(np.isnan(jl.log_softmax(jnp.array(x[0])))) and np.all(
        np.isnan(jl.softmax(jnp.array(x[0])))
    )


@row("a `nan` logit in a counted element")
def nan_logit(torch):
    F = torch.nn.functional
    x, y = [[NAN, 0.0, 1.0], [0.0, 1.0, 2.0]], [1, 0]
    theirs = F.cross_entropy(_t(torch, x), torch.tensor(y), reduction="none")
    assert torch.isnan(theirs[0]) and torch.isfinite(theirs[1])
    assert torch.isnan(F.cross_entropy(_t(torch, x), torch.tensor(y)))
    ours = jl.cross_entropy(jnp.array(x), jnp.array(y), reduction="none")
    assert np.isnan(ours[0]) and np.isfinite(ours[1])
    assert np.isnan(jl.cross_entropy(jnp.array(x), jnp.array(y)))


@row("gradient of `log_softmax` where a float32 output overflows to `-inf` (`x = [3e38, -3e38]`)")
def log_softmax_overflow_gradient(torch):
    x = torch.tensor([3e38, -3e38], requires_grad=True)
    y = torch.nn.functional.log_softmax(x, 0)
    y[1].backward()
    assert y[1].item() == -INF
    np.testing.assert_array_equal(x.grad.numpy(), [-1.0, 1.0])
    v = jnp.array([3e38, -3e38], jnp.float32)
    assert jl.log_softmax(v)[1] == -INF
    np.testing.assert_array_equal(jax.grad(lambda z: jl.log_softmax(z)[1])(v), [-1.0, 1.0])


@row("`ignore_index` that the targets' dtype cannot hold (the default -100 with `uint8` targets)")
def unrepresentable_ignore_index(torch):
    F = torch.nn.functional
    x = np.random.default_rng(2).normal(size=(3, 200)).astype(np.float32)
    y = [156, 3, 7]
    theirs = F.cross_entropy(_t(torch, x), torch.tensor(y, dtype=torch.uint8), reduction="none")
    ours = jl.cross_entropy(x, np.array(y, np.uint8), reduction="none")
    as_int64 = F.cross_entropy(_t(torch, x), torch.tensor(y), reduction="none")
    np.testing.assert_allclose(theirs.numpy(), as_int64.numpy())
    np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-5)
    assert ours[0] > 0.0


@row("`binary_cross_entropy_with_logits` with a target outside `[0, 1]`")
def bce_target_outside(torch):
    F = torch.nn.functional
    x, t = [0.3, 0.3], [1.5, -0.5]
    theirs = F.binary_cross_entropy_with_logits(_t(torch, x), _t(torch, t), reduction="none")
    ours = jl.binary_cross_entropy_with_logits(jnp.array(x), jnp.array(t), reduction="none")
    np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-6)
    sp = np.log1p(np.exp(-0.3))  # softplus(-x); softplus(x) = x + softplus(-x)
    np.testing.assert_allclose(
        ours, [1.5 * sp - 0.5 * (0.3 + sp), -0.5 * sp + 1.5 * (0.3 + sp)], rtol=1e-6
    )


@row(
    "`kl_div` with a `nan` or `+inf` `log_input` where the target is 0 (or `-inf` with "
    "`log_target=True`)"
)
def kl_nan_input_at_zero_target(torch):
    F = torch.nn.functional
    log_q = [NAN, INF, -0.5]
    for target, log_target in [([0.0, 0.0, 1.0], False), ([-INF, -INF, 0.0], True)]:
        theirs = F.kl_div(
            _t(torch, log_q), _t(torch, target), reduction="none", log_target=log_target
        )
        assert torch.isnan(theirs[:2]).all() and torch.isfinite(theirs[2])
        args = (jnp.array(log_q), jnp.array(target))
        ours = jl.kl_div(*args, reduction="none", log_target=log_target)
        np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-6)
        assert np.isnan(jl.kl_div(*args, log_target=log_target))  # and the mean
        grad = jax.grad(jl.kl_div)(*args, reduction="sum", log_target=log_target)
        assert np.all(np.isnan(grad[:2])) and grad[2] == -1.0


@row("`nll_loss` where the target's class weight is 0 and its log-probability is `-inf`")
def nll_zero_weight_minus_inf(torch):
    F = torch.nn.functional
    log_p, y, w = [[-INF, -0.1], [-0.5, -1.0]], [0, 1], [0.0, 1.0]
    args = (_t(torch, log_p), torch.tensor(y))
    assert torch.isnan(F.nll_loss(*args, weight=_t(torch, w), reduction="none")[0])
    assert torch.isnan(F.nll_loss(*args, weight=_t(torch, w)))
    mine = (jnp.array(log_p), jnp.array(y))
    np.testing.assert_array_equal(jl.nll_loss(*mine, weight=jnp.array(w), reduction="none"), [0, 1])
    assert jl.nll_loss(*mine, weight=jnp.array(w)) == 1.0


@row("a row of `cross_entropy` whose logits are all `-inf` and whose probability target is all 0")
def all_minus_inf_row_without_mass(torch):
    x, t = [[-INF, -INF], [0.0, 1.0]], [[0.0, 0.0], [0.5, 0.5]]
    theirs = torch.nn.functional.cross_entropy(_t(torch, x), _t(torch, t), reduction="none")
    assert torch.isnan(theirs[0]) and torch.isfinite(theirs[1])
    ours = jl.cross_entropy(jnp.array(x), jnp.array(t), reduction="none")
    assert ours[0] == 0.0 and np.isclose(ours[1], theirs[1].item())


@row("gradient of `cross_entropy` at a `-inf` logit that carries target mass (the loss is `inf`)")
def gradient_at_minus_inf_target(torch):
    x = [[0.0, -INF, 1.0]]
    for target, mass in [(torch.tensor([1]), -1.0), (_t(torch, [[0.5, 0.5, 0.0]]), -0.5)]:
        tx = _t(torch, x).requires_grad_()
        loss = torch.nn.functional.cross_entropy(tx, target)
        loss.backward()
        assert loss.item() == INF and tx.grad[0, 1].item() == mass
        mine = jnp.asarray(target.numpy())
        value, grad = jax.value_and_grad(jl.cross_entropy)(jnp.array(x), mine)
        assert value == np.inf and grad[0, 1] == 0.0 and np.all(np.isfinite(grad))


@row(
    "`cross_entropy` with target mass (an index target, or probability) on a class whose "
    "logit is `-inf`, in a row with a finite logit"
)
def mass_on_minus_inf(torch):
    x, t, y = [[0.0, -INF, 1.0]], [[0.5, 0.5, 0.0]], [1]
    assert torch.nn.functional.cross_entropy(_t(torch, x), _t(torch, t)).item() == INF
    assert torch.nn.functional.cross_entropy(_t(torch, x), torch.tensor(y)).item() == INF
    for dtype in (jnp.bfloat16, jnp.float16, jnp.float32):
        logits = jnp.array(x, dtype)
        assert jl.cross_entropy(logits, jnp.array(t, dtype), reduction="none")[0] == np.inf
        assert jl.cross_entropy(logits, jnp.array(y), reduction="none")[0] == np.inf
        where = jnp.array([[True, False, True]])
        masked = jl.cross_entropy(jnp.zeros_like(logits), jnp.array(t, dtype), where=where)
        assert masked == np.inf
    with jax.enable_x64(True):
        assert jl.cross_entropy(jnp.array(x), jnp.array(t), reduction="none")[0] == np.inf


@row("`cross_entropy` of a row whose logits are all `-inf`, with target mass")
def all_minus_inf_row(torch):
    x, t = [[-INF, -INF, -INF]], [[0.2, 0.3, 0.5]]
    assert torch.isnan(torch.nn.functional.cross_entropy(_t(torch, x), _t(torch, t)))
    assert torch.isnan(torch.nn.functional.cross_entropy(_t(torch, x), torch.tensor([2])))
    for dtype in (jnp.bfloat16, jnp.float32):
        logits = jnp.array(x, dtype)
        assert np.isnan(jl.cross_entropy(logits, jnp.array(t, dtype)))
        assert np.isnan(jl.cross_entropy(logits, jnp.array([2])))


@row("`log_softmax` or `softmax` over an axis of length 0")
def normalize_empty_axis(torch):
    F = torch.nn.functional
    for theirs, ours in [(F.log_softmax, jl.log_softmax), (F.softmax, jl.softmax)]:
        assert theirs(torch.zeros(3, 0), dim=-1).shape == (3, 0)
        assert theirs(torch.zeros(0, 4, dtype=torch.float64), dim=0).shape == (0, 4)
        for shape, axis, dtype in [((3, 0), -1, jnp.float32), ((0, 4), 0, jnp.bfloat16)]:
            out = ours(jnp.zeros(shape, dtype), axis=axis)
            assert out.shape == shape and out.dtype == dtype
            grad = jax.grad(lambda x, ours=ours, axis=axis: ours(x, axis=axis).sum())
            assert grad(jnp.zeros(shape)).shape == shape


def _ctc_both(torch, logits, labels, input_lengths, target_lengths, **kwargs):
    """(PyTorch, jaxloss) losses and gradients with respect to ``log_probs`` (float64)."""
    lp = torch.tensor(logits, dtype=torch.float64).log_softmax(-1).requires_grad_()
    theirs = torch.nn.functional.ctc_loss(
        lp, torch.tensor(labels), torch.tensor(input_lengths), torch.tensor(target_lengths),
        **kwargs,
    )  # fmt: skip
    theirs.sum().backward()
    with jax.enable_x64(True):

        def loss(x):
            return jl.ctc_loss(x, labels, input_lengths, target_lengths, **kwargs)

        x = jnp.asarray(lp.detach().numpy())
        ours = loss(x), jax.grad(lambda x: jnp.sum(loss(x)))(x)
    return (theirs.detach().numpy(), lp.grad.numpy()), tuple(map(np.asarray, ours))


@row("gradient of `ctc_loss` with respect to `log_probs`")
def ctc_gradient(torch):
    logits = np.random.default_rng(0).normal(size=(6, 2, 4))
    labels, lengths = np.array([[1, 2], [3, 3]]), np.array([6, 5])
    theirs, ours = _ctc_both(torch, logits, labels, lengths, np.array([2, 2]), reduction="sum")
    np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-12)
    posterior = -ours[1]
    active = (np.arange(6) < lengths[:, None]).T[..., None]
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    np.testing.assert_allclose(theirs[1], active * np.exp(log_probs) - posterior, atol=1e-12)
    np.testing.assert_allclose(ours[1].sum(-1), -1.0 * active[..., 0], atol=1e-12)
    through = jax.grad(
        lambda z: jnp.sum(
            jl.ctc_loss(jl.log_softmax(z), labels, lengths, np.array([2, 2]), reduction="sum")
        )  # fmt: skip
    )
    x = torch.tensor(logits, requires_grad=True)
    torch.nn.functional.ctc_loss(x.log_softmax(-1), torch.tensor(labels), torch.tensor(lengths),
                                 torch.tensor([2, 2]), reduction="sum").backward()  # fmt: skip
    with jax.enable_x64(True):
        np.testing.assert_allclose(through(jnp.asarray(logits)), x.grad.numpy(), atol=1e-12)


@row("a `ctc_loss` label equal to `blank`, within the target length")
def ctc_blank_label(torch):
    logits = np.random.default_rng(1).normal(size=(5, 1, 4))
    for blank, labels in [(0, [[1, 0, 2]]), (3, [[1, 3, 2]])]:
        theirs, ours = _ctc_both(torch, logits, np.array(labels), [5], [3], blank=blank)
        assert np.isfinite(theirs[0]) and np.all(np.isfinite(theirs[1]))
        assert np.isnan(ours[0]) and np.all(np.isnan(ours[1][:, :, [1, 2, blank]]))
    out_of_range = jl.ctc_loss(logits, np.array([[1, 4, 2]]), np.array([5]), np.array([3]))
    assert np.isnan(out_of_range)


@row("`ctc_loss` targets concatenated into one 1-D tensor")
def ctc_concatenated_targets(torch):
    logits = np.random.default_rng(2).normal(size=(5, 2, 4))
    lp = torch.tensor(logits).log_softmax(-1)
    flat = torch.tensor([1, 2, 3])
    concatenated = torch.nn.functional.ctc_loss(
        lp, flat, torch.tensor([5, 5]), torch.tensor([2, 1])
    )
    padded = torch.nn.functional.ctc_loss(
        lp, torch.tensor([[1, 2], [3, 0]]), torch.tensor([5, 5]), torch.tensor([2, 1])
    )
    assert torch.isclose(concatenated, padded)
    message = _raises(lambda: jl.ctc_loss(logits, np.array([1, 2, 3]), [5, 5], [2, 1]), ValueError)
    assert "targets must have 2 dimension(s)" in message


@row("`ctc_loss` with an input length above T, a target length above S, or a negative length")
def ctc_lengths_out_of_range(torch):
    lp = torch.zeros(5, 1, 4)
    x, labels = np.zeros((5, 1, 4)), np.array([[1, 2]])
    cases = [(([6], [2]), "input_lengths"), (([5], [3]), "target_lengths")]
    cases += [(([-1], [2]), "input_lengths"), (([5], [-1]), "target_lengths")]
    for lengths, name in cases:
        _raises(lambda: torch.nn.functional.ctc_loss(
            lp, torch.tensor(labels), *map(torch.tensor, lengths)), RuntimeError)  # fmt: skip
        message = _raises(lambda: jl.ctc_loss(x, labels, *map(np.array, lengths)), ValueError)
        assert message.startswith(name)
    traced = jax.jit(lambda n: jl.ctc_loss(x, labels, n, jnp.array([2]), reduction="none"))
    assert np.isnan(traced(jnp.array([6]))[0]) and np.isfinite(traced(jnp.array([5]))[0])


@row(
    "`ctc_loss` with no possible alignment (a target longer than its input allows, or a "
    "repeated label without a frame for the blank between)"
)
def ctc_impossible(torch):
    logits = np.random.default_rng(3).normal(size=(5, 2, 4))
    labels, lengths = np.array([[1, 2, 3], [1, 1, 2]]), np.array([2, 3])
    for zero_infinity in (False, True):
        both = _ctc_both(torch, logits, labels, lengths, np.array([3, 3]),
                         reduction="none", zero_infinity=zero_infinity)  # fmt: skip
        active = np.arange(5)[:, None] < lengths
        for (value, grad), theirs in zip(both, (True, False), strict=True):
            if zero_infinity:
                assert np.all(value == 0) and np.all(grad == 0)
                continue
            assert np.all(value == np.inf) and np.all(grad[~active] == 0)
            # Sequence 1's classes are the blank, 1 and 2: class 3 is nan only in PyTorch.
            assert np.all(np.isnan(grad[active][:, :3]))
            assert np.all(np.isnan(grad[:3, 1, 3])) if theirs else np.all(grad[:, 1, 3] == 0)


@row("`ctc_loss` with a target of length 0, or an input of length 0")
def ctc_empty(torch):
    logits = np.random.default_rng(4).normal(size=(4, 3, 3))
    labels = np.array([[1, 2], [1, 2], [2, 2]])
    inputs, targets = np.array([4, 0, 0]), np.array([0, 0, 2])
    lp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    for reduction in ("none", "mean"):
        theirs, ours = _ctc_both(torch, logits, labels, inputs, targets, reduction=reduction)
        for value, grad in (theirs, ours):
            per_sequence = [-lp[:, 0, 0].sum(), 0.0, np.inf]
            want = per_sequence if reduction == "none" else np.mean(per_sequence)
            np.testing.assert_allclose(value, want, rtol=1e-12)
            assert np.all(grad[:, 1:] == 0)
    both = _ctc_both(torch, logits[:, :1], labels[:1], [4], [0], reduction="mean")
    for value, _ in both:
        np.testing.assert_allclose(value, -lp[:, 0, 0].sum(), rtol=1e-12)  # divided by 1


@row("`soft_margin_loss` where $t x$ is below about -709 (float64; -88 in float32)")
def soft_margin_overflow(torch):
    F = torch.nn.functional
    for dtype, jdtype, edge in [
        (torch.float64, jnp.float64, 710.0),
        (torch.float32, jnp.float32, 89.0),
    ]:
        x, t = [-edge, 2.0], [1.0, 1.0]
        theirs = F.soft_margin_loss(torch.tensor(x, dtype=dtype), torch.tensor(t, dtype=dtype),
                                    reduction="none")  # fmt: skip
        assert theirs[0].item() == INF and np.isfinite(theirs[1].item())
        with jax.enable_x64(True):
            ours = jl.soft_margin_loss(jnp.array(x, jdtype), jnp.array(t, jdtype), reduction="none")
        np.testing.assert_allclose(ours, [edge, theirs[1].item()], rtol=1e-6)


@row(
    "a `multi_margin_loss` target outside `[0, C)`, or a `multilabel_margin_loss` list entry "
    "outside `[0, C)` before its `-1`"
)
def margin_target_out_of_range(torch):
    F = torch.nn.functional
    x = np.random.default_rng(0).normal(size=(2, 3)).astype(np.float32)
    _raises(lambda: F.multi_margin_loss(_t(torch, x), torch.tensor([0, 3])), RuntimeError)
    _raises(
        lambda: F.multilabel_margin_loss(_t(torch, x), torch.tensor([[0, -1, 0], [4, -1, 0]])),
        RuntimeError,
    )
    ours = jl.multi_margin_loss(x, jnp.array([0, 3]), reduction="none")
    assert np.isfinite(ours[0]) and np.isnan(ours[1])
    ours = jl.multilabel_margin_loss(x, jnp.array([[0, -1, 0], [4, -1, 0]]), reduction="none")
    assert np.isfinite(ours[0]) and np.isnan(ours[1])


def _margin_pair(torch, name, x, *args, **kwargs):
    """(PyTorch's, jaxloss's) value and gradient of the sum, float64."""
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    theirs = getattr(torch.nn.functional, name)(xt, *[torch.tensor(a) for a in args], **kwargs)
    theirs.sum().backward()
    with jax.enable_x64(True):
        fn = lambda v: jnp.sum(getattr(jl, name)(v, *args, **kwargs))  # noqa: E731
        ours = jax.value_and_grad(fn)(jnp.asarray(x, jnp.float64))
    return (theirs.sum().item(), xt.grad.numpy()), (float(ours[0]), np.asarray(ours[1]))


@row("the subgradient of the margin losses at their kinks")
def margin_kinks(torch):
    x = np.array([[1.0, 0.0, 0.5]])
    cases = [
        ("multi_margin_loss", (np.array([0]),), {}, (0, 1), 0.0),
        ("multi_margin_loss", (np.array([0]),), {"p": 2}, (0, 1), 0.0),
        ("multilabel_margin_loss", (np.array([[0, -1, 2]]),), {}, (0, 1), 0.0),
        (
            "hinge_embedding_loss",
            (np.array([[-1.0, 1.0, 1.0]]),),
            {"reduction": "sum"},
            (0, 0),
            -1.0,
        ),
    ]
    for name, args, kwargs, at, slope in cases:
        theirs, ours = _margin_pair(torch, name, x, *args, **kwargs)
        assert theirs[1][at] == ours[1][at] == slope, name
        np.testing.assert_allclose(ours[1], theirs[1], atol=1e-15)


@row("a `multilabel_margin_loss` class listed twice before the `-1`")
def multilabel_margin_repeats(torch):
    x = np.random.default_rng(1).normal(size=(1, 4))
    once = _margin_pair(torch, "multilabel_margin_loss", x, np.array([[1, -1, 0, 0]]))
    twice = _margin_pair(torch, "multilabel_margin_loss", x, np.array([[1, 1, -1, 0]]))
    for single, double in zip(once, twice, strict=True):
        np.testing.assert_allclose(double[0], 2 * single[0], rtol=1e-14)
    np.testing.assert_allclose(twice[1][0], twice[0][0], rtol=1e-14)


@row("a `hinge_embedding_loss` target other than 1 and -1")
def hinge_embedding_other_targets(torch):
    x, t = np.array([0.3, 1.7, -0.4]), np.array([0.0, 2.0, 0.5])
    theirs, ours = _margin_pair(torch, "hinge_embedding_loss", x, t, reduction="sum")
    want = np.sum(x + np.maximum(0.0, 1.0 - x))
    np.testing.assert_allclose([theirs[0], ours[0]], [want, want], rtol=1e-14)


def _torch_value_and_grad(torch, name, scores, *args, **kwargs):
    x = torch.tensor(np.asarray(scores), dtype=torch.float64, requires_grad=True)
    value = getattr(torch.nn.functional, name)(x, *args, **kwargs)
    value.backward()
    return value.detach().numpy(), x.grad.numpy()


@row("a `nan` score in `multi_margin_loss` or `multilabel_margin_loss`")
def margin_nan_scores(torch):
    x = np.array([[np.nan, 0.5, 0.2]])
    for name, y in (("multi_margin_loss", [0]), ("multilabel_margin_loss", [[0, -1, 0]])):
        value, _ = _torch_value_and_grad(torch, name, x, torch.tensor(y))
        assert np.isfinite(value), name
        ours, grad = jax.value_and_grad(getattr(jl, name))(jnp.asarray(x), jnp.array(y))
        assert np.isnan(ours) and np.all(np.isnan(grad)), name
    value, _ = _torch_value_and_grad(torch, "multi_margin_loss", x, torch.tensor([0]))
    assert value == 0.0  # the nan is the target's score: every hinge reads it


@row("gradient of `hinge_embedding_loss` at a `nan` input")
def hinge_embedding_nan(torch):
    x = np.array([np.nan, 0.5])
    value, grad = _torch_value_and_grad(
        torch, "hinge_embedding_loss", x, -torch.ones(2, dtype=torch.float64), reduction="sum"
    )
    assert np.isnan(value) and grad[0] == 0.0

    def ours(x):
        return jl.hinge_embedding_loss(x, -jnp.ones(2), reduction="sum")

    value, grad = jax.value_and_grad(ours)(jnp.asarray(x))
    assert np.isnan(value) and np.isnan(grad[0]) and grad[1] == -1.0


@row(
    "`multilabel_margin_loss` with a target class and a class that is not one both `+inf`, "
    "or both `-inf`"
)
def multilabel_margin_infinite_scores(torch):
    """Target class 0 against classes 1 and 2: PyTorch's value and gradient wherever no
    target shares an infinite score with a class that is not one; nan where one does."""
    inf = np.inf
    y = [[0, -1, 0]]
    for scores in ((inf, 1.0, 0.0), (-inf, 0.0, 0.0), (1.0, inf, 0.0), (1.0, -inf, 0.0),
                   (inf, inf, 0.0), (-inf, -inf, 0.0)):  # fmt: skip
        x = np.array([scores])
        ours, grad = jax.value_and_grad(jl.multilabel_margin_loss)(jnp.asarray(x), jnp.array(y))
        want, want_grad = _torch_value_and_grad(torch, "multilabel_margin_loss", x,
                                                torch.tensor(y))  # fmt: skip
        if np.isinf(scores[0]) and scores[0] == scores[1]:
            assert np.isnan(ours) and not np.isnan(want), scores
            continue
        np.testing.assert_array_equal(ours, want)
        finite = np.isfinite(want_grad)
        np.testing.assert_allclose(np.asarray(grad)[finite], want_grad[finite], rtol=1e-6)


@row(
    "a 0-d input to `softmax`, `log_softmax`, `multi_margin_loss` or "
    "`multilabel_margin_loss`; `(C,)` scores with a `(1,)` target in `multi_margin_loss`; "
    "integer 0/1 targets in `multilabel_soft_margin_loss`"
)
def pytorch_shapes(torch):
    F = torch.nn.functional
    for ours, theirs in ((jl.softmax, torch.softmax), (jl.log_softmax, torch.log_softmax)):
        got, want = ours(jnp.array(2.0)), theirs(torch.tensor(2.0, dtype=torch.float64), 0)
        assert got.shape == () and float(got) == want.item()
    cases = [
        ("multi_margin_loss", np.array(2.0), np.array(0)),
        ("multi_margin_loss", np.array([0.1, 0.2, 0.4]), np.array([1])),
        ("multilabel_margin_loss", np.array(2.0), np.array(0)),
    ]
    for name, x, y in cases:
        for reduction in ("mean", "none"):
            got = getattr(jl, name)(x, y, reduction=reduction)
            want = getattr(F, name)(torch.tensor(x), torch.tensor(y), reduction=reduction)
            assert got.shape == tuple(want.shape), (name, x.shape, reduction)
            np.testing.assert_allclose(got, want.numpy(), rtol=1e-6)
    x, t = np.array([[0.1, -0.7]]), np.array([[0, 1]])
    want = F.multilabel_soft_margin_loss(torch.tensor(x), torch.tensor(t)).numpy()
    np.testing.assert_allclose(jl.multilabel_soft_margin_loss(x, t), want, rtol=1e-6)


CHECKS = {situation: check for check, situation in _ROWS}


def test_every_table_row_has_a_check():
    text = PAGE.read_text()
    rows = [row for heading in TABLES for row in table_rows(text, heading)]
    assert len(rows) == len(set(rows))
    assert set(rows) == set(CHECKS), {
        "rows without a check": sorted(set(rows) - set(CHECKS)),
        "checks without a row": sorted(set(CHECKS) - set(rows)),
    }


@pytest.mark.exhaustive(quick_cases=3)
@pytest.mark.parametrize("situation", list(CHECKS), ids=[f.__name__ for f in CHECKS.values()])
def test_row_holds_in_pytorch_and_jaxloss(torch, situation):
    assert re.search(r"^2\.13\.", torch.__version__), torch.__version__
    CHECKS[situation](torch)


def test_forward_and_higher_order_derivatives_work_in_both(torch):
    """The closing paragraph: torch.func.jvp, jacfwd and hessian run on PyTorch's losses
    (only the class weight has no gradient there), as jax.jvp and jax.hessian do here."""
    from torch.func import hessian, jacfwd, jvp

    F = torch.nn.functional
    x = torch.randn(3, 4, dtype=torch.float64)
    y = torch.tensor([0, 2, 1])
    p = torch.softmax(torch.randn(3, 4, dtype=torch.float64), -1)
    losses = [
        lambda z: F.cross_entropy(z, y),
        lambda z: F.cross_entropy(z, p),
        lambda z: F.nll_loss(z.log_softmax(-1), y),
        lambda z: F.binary_cross_entropy_with_logits(z, p),
        lambda z: F.binary_cross_entropy(torch.sigmoid(z), p),
        lambda z: F.kl_div(z.log_softmax(-1), p, reduction="batchmean"),
        lambda z: F.log_softmax(z, -1).sum(),
        lambda z: F.logsigmoid(z).sum(),
    ]
    for loss in losses:
        _, tangent = jvp(loss, (x,), (torch.ones_like(x),))
        assert torch.isfinite(tangent)
        assert jacfwd(torch.func.grad(loss))(x).shape == (3, 4, 3, 4)
        assert torch.isfinite(hessian(loss)(x)).all()
