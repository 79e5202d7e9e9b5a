"""``ctc_loss`` and ``ctc_loss_with_paddings``: float64 values and gradients against
PyTorch 2.13 (through ``log_softmax``), optax, autodiff of a naive recursion and finite
differences; the edges (impossible alignments, empty targets and inputs, bad labels,
extreme logits); low precision; errors that name the argument; O(T B S) memory."""

import re

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxloss as jl

SETTINGS = hypothesis.settings(max_examples=12, deadline=None, derandomize=True)


def _problem(seed, frames, batch, classes, max_length, blank=0):
    """Random logits (T, B, C), labels other than ``blank`` padded with -1, and lengths."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(frames, batch, classes)) * 2.0
    labels = rng.integers(0, classes - 1, size=(batch, max_length))
    labels = labels + (labels >= blank)  # skip the blank
    target_lengths = rng.integers(0, max_length + 1, size=batch)
    input_lengths = rng.integers(0, frames + 1, size=batch)
    labels = np.where(np.arange(max_length) < target_lengths[:, None], labels, -1)
    return logits, labels, input_lengths, target_lengths


def _torch_ctc(logits, labels, input_lengths, target_lengths, **kwargs):
    """PyTorch's loss of ``log_softmax(logits)`` and its gradient with respect to the logits."""
    torch = pytest.importorskip("torch")
    x = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    padded = torch.tensor(np.maximum(labels, 1))  # PyTorch reads no padding, but checks it
    loss = torch.nn.functional.ctc_loss(
        x.log_softmax(-1), padded, torch.tensor(input_lengths), torch.tensor(target_lengths),
        **kwargs,
    )  # fmt: skip
    loss.sum().backward()
    return loss.detach().numpy(), x.grad.numpy()


def _ours(logits, labels, input_lengths, target_lengths, **kwargs):
    def loss(x):
        return jl.ctc_loss(jl.log_softmax(x), labels, input_lengths, target_lengths, **kwargs)

    value = loss(jnp.asarray(logits))
    grad = jax.grad(lambda x: jnp.sum(loss(x)))(jnp.asarray(logits))
    return np.asarray(value), np.asarray(grad)


def _assert_same(ours, theirs, rtol=1e-10):
    for got, want in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=1e-12, equal_nan=True)


@pytest.mark.exhaustive
@SETTINGS
@hypothesis.given(
    seed=st.integers(0, 2**16),
    frames=st.integers(1, 12),
    batch=st.integers(1, 4),
    classes=st.integers(2, 7),
    max_length=st.integers(0, 5),
    blank_at=st.floats(0.0, 0.999),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    zero_infinity=st.booleans(),
)
def test_matches_pytorch_through_log_softmax(
    seed, frames, batch, classes, max_length, blank_at, reduction, zero_infinity
):
    blank = int(blank_at * classes)
    problem = _problem(seed, frames, batch, classes, max_length, blank)
    kwargs = {"blank": blank, "reduction": reduction, "zero_infinity": zero_infinity}
    with jax.enable_x64(True):
        _assert_same(_ours(*problem, **kwargs), _torch_ctc(*problem, **kwargs))


def _naive_nll(log_probs, labels, frames):
    """One sequence's loss from the textbook recursion in probability space (Graves et
    al., 2006, eq. 6-8), to be differentiated by autodiff: no log-space tricks."""
    extended = [0]
    for label in labels:
        extended += [int(label), 0]
    probs = jnp.exp(log_probs[:, jnp.array(extended)])
    if frames == 0:
        return 0.0 if len(labels) == 0 else jnp.inf
    alpha = [probs[0, s] if s < 2 else 0.0 for s in range(len(extended))]
    for t in range(1, frames):
        new = []
        for s, label in enumerate(extended):
            total = alpha[s] + (alpha[s - 1] if s >= 1 else 0.0)
            if s >= 2 and label != 0 and label != extended[s - 2]:
                total = total + alpha[s - 2]
            new.append(probs[t, s] * total)
        alpha = new
    return -jnp.log(sum(alpha[-2:]) if labels.size else alpha[-1])


def test_gradient_is_autodiff_of_the_naive_recursion(x64):
    # Unnormalized log-probabilities: the rule is the true gradient, not PyTorch's.
    logits = np.random.default_rng(3).normal(size=(9, 3, 5)) - 2.0
    labels = np.array([[1, 2, 2], [4, 4, 0], [3, 1, 1]])
    input_lengths, target_lengths = np.array([9, 6, 4]), np.array([3, 2, 0])

    def loss(lp):
        return jnp.sum(jl.ctc_loss(lp, labels, input_lengths, target_lengths, reduction="sum"))

    value, grad = jax.value_and_grad(loss)(jnp.asarray(logits))
    want_value, want_grad = 0.0, np.zeros_like(logits)
    for b in range(3):
        row = labels[b, : target_lengths[b]]

        def naive(lp):
            return _naive_nll(lp, row, input_lengths[b])

        v, g = jax.value_and_grad(naive)(jnp.asarray(logits[:, b]))
        want_value, want_grad[:, b] = want_value + v, g
    np.testing.assert_allclose(value, want_value, rtol=1e-12)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-10, atol=1e-14)
    # Each frame's gradient sums to -1 (one unit of occupancy), 0 past the input length.
    sums = np.asarray(grad).sum(-1)
    np.testing.assert_allclose(sums, -1.0 * (np.arange(9)[:, None] < input_lengths), atol=1e-12)


@pytest.mark.exhaustive
@pytest.mark.parametrize("blank, reduction", [(0, "mean"), (2, "sum")])
def test_second_order_gradients_against_finite_differences(x64, blank, reduction):
    logits, labels, _, _ = _problem(5, 6, 2, 4, 2, blank=blank)
    labels = np.where(labels < 0, 3 - blank, labels)
    lengths, label_lengths = np.array([6, 4]), np.array([2, 1])

    def loss(lp):
        return jl.ctc_loss(lp, labels, lengths, label_lengths, blank=blank, reduction=reduction)

    check_grads(jax.jit(loss), (jnp.asarray(logits) - 1.0,), order=2, modes=["fwd", "rev"])


def _optax_problem(seed, batch=3, frames=20, classes=6, max_length=4, blank=0):
    """Batch-major logits with paddings at the end and inside, and labels whose
    alignments are possible (enough frames for every label and repeat)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(batch, frames, classes)) * 2.0
    logit_paddings = (rng.random((batch, frames)) < 0.15).astype(np.float64)
    logit_paddings[:, frames - rng.integers(0, 3) :] = 1.0
    labels = rng.integers(0, classes - 1, size=(batch, max_length))
    labels = labels + (labels >= blank)
    label_lengths = rng.integers(0, max_length + 1, size=batch)
    label_paddings = (np.arange(max_length) >= label_lengths[:, None]).astype(np.float64)
    assert np.all((1 - logit_paddings).sum(1) >= 2 * max_length + 1)
    return logits, logit_paddings, labels, label_paddings


@pytest.mark.exhaustive
@pytest.mark.parametrize("seed, blank", [(0, 0), (1, 3), (2, 5)])
def test_matches_optax_on_possible_alignments(x64, seed, blank):
    optax = pytest.importorskip("optax")
    problem = tuple(jnp.asarray(a) for a in _optax_problem(seed, blank=blank))
    rest = problem[1:]

    def ours(z):
        return jl.ctc_loss_with_paddings(z, *rest, blank=blank)

    def theirs(z):
        return optax.ctc_loss(z, *rest, blank_id=blank)

    weights = jnp.arange(1.0, 4.0)
    for loss in (ours, theirs):
        # jit: optax's recursion op by op would compile each of its operations.
        value_and_grad = jax.jit(lambda z: (loss(z), jax.grad(lambda z: loss(z) @ weights)(z)))
        loss.result = value_and_grad(problem[0])
    _assert_same(ours.result, theirs.result, rtol=1e-9)


def test_with_paddings_is_ctc_loss_of_the_transposed_log_softmax(x64):
    logits, logit_paddings, labels, label_paddings = _optax_problem(4, blank=2)
    logit_paddings[:, :] = 0.0
    logit_paddings[:, 10:] = 1.0  # 10 frames for every sequence
    lengths = (1 - label_paddings).sum(1).astype(int)
    for reduction in ("none", "mean", "sum"):
        got = jl.ctc_loss_with_paddings(
            logits, logit_paddings, labels, label_paddings, blank=2, reduction=reduction
        )
        log_probs = jl.log_softmax(jnp.asarray(logits)).transpose(1, 0, 2)
        want = jl.ctc_loss(log_probs, labels, np.full(3, 10), lengths, blank=2, reduction=reduction)
        np.testing.assert_allclose(got, want, rtol=1e-13)


# (labels, input length, target length): PyTorch's and jaxloss's loss is inf, and the
# gradient nan on the input's frames (0 after them), or 0 and 0 with zero_infinity.
IMPOSSIBLE = {
    "target longer than the input": ([1, 2, 3], 2, 3),
    "repeat without room for the blank between": ([1, 1, 2], 3, 3),
    "no frames and a target": ([1, 2, 0], 0, 2),
}


@pytest.mark.exhaustive
@pytest.mark.parametrize("name", IMPOSSIBLE)
@pytest.mark.parametrize("zero_infinity", [False, True])
def test_impossible_alignments_like_pytorch(x64, name, zero_infinity):
    labels, input_length, target_length = IMPOSSIBLE[name]
    logits = np.random.default_rng(0).normal(size=(5, 1, 4))
    problem = (logits, np.array([labels]), np.array([input_length]), np.array([target_length]))
    kwargs = {"reduction": "none", "zero_infinity": zero_infinity}
    ours, theirs = _ours(*problem, **kwargs), _torch_ctc(*problem, **kwargs)
    _assert_same(ours, theirs)
    assert ours[0][0] == (0.0 if zero_infinity else np.inf)
    active = np.arange(5) < input_length
    assert np.all(ours[1][~active] == 0.0)
    assert np.all(ours[1][active] == 0.0) if zero_infinity else np.all(np.isnan(ours[1][active]))


@pytest.mark.exhaustive(quick_cases=2)
@pytest.mark.parametrize("input_length, target_length", [(4, 0), (0, 0), (3, 2)])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_empty_targets_and_inputs_like_pytorch(x64, input_length, target_length, reduction):
    # A target of length 0 is all blanks (and "mean" divides by 1); no frames and no
    # target is the empty alignment, loss 0. [1, 1] in 3 frames is just possible.
    logits = np.random.default_rng(1).normal(size=(4, 2, 3))
    labels = np.array([[1, 1], [2, 1]])
    problem = (logits, labels, np.array([input_length, 4]), np.array([target_length, 2]))
    ours = _ours(*problem, reduction=reduction)
    _assert_same(ours, _torch_ctc(*problem, reduction=reduction))
    assert np.all(np.isfinite(ours[0])) and np.all(np.isfinite(ours[1]))


@pytest.mark.exhaustive
def test_labels_past_the_target_length_are_never_read(x64):
    logits, labels, input_lengths, target_lengths = _problem(7, 8, 4, 5, 3)
    want = _ours(logits, np.where(labels < 0, 1, labels), input_lengths, target_lengths)
    for padding in (-7, 0, 5, 99):
        got = _ours(logits, np.where(labels < 0, padding, labels), input_lengths, target_lengths)
        _assert_same(got, want, rtol=0)


@pytest.mark.exhaustive
@pytest.mark.parametrize("label", [0, -1, 5, 2**20])
def test_a_blank_or_out_of_range_label_is_nan_for_its_sequence(x64, label):
    # 0 is the blank; the other sequence is unaffected, and so is its gradient.
    logits = np.random.default_rng(2).normal(size=(6, 2, 5))
    labels = np.array([[1, label, 2], [1, 2, 3]])
    value, grad = _ours(logits, labels, np.array([6, 6]), np.array([3, 3]), reduction="none")
    assert np.isnan(value[0]) and np.all(np.isnan(grad[:, 0]))
    want = _ours(logits[:, 1:], labels[1:], np.array([6]), np.array([3]), reduction="none")
    _assert_same((value[1:], grad[:, 1:]), want, rtol=0)


def test_traced_lengths_out_of_range_are_nan_for_their_sequence(x64):
    logits, labels, _, _ = _problem(8, 6, 4, 4, 2)
    labels = np.abs(labels) % 3 + 1
    loss = jax.jit(lambda n, m: jl.ctc_loss(logits, labels, n, m, reduction="none"))
    got = loss(jnp.array([6, 7, -1, 6]), jnp.array([2, 2, 2, 3]))
    assert np.isfinite(got[0]) and np.all(np.isnan(got[1:]))


@pytest.mark.exhaustive
def test_extreme_logits_stay_finite_and_match_pytorch(x64):
    rng = np.random.default_rng(3)
    logits = rng.choice([-1e4, 1e4], size=(7, 3, 4)) + rng.normal(size=(7, 3, 4))
    problem = (logits, np.array([[1, 2], [3, 3], [2, 0]]), np.array([7, 7, 5]), np.array([2, 2, 1]))
    for reduction in ("mean", "none"):
        ours = _ours(*problem, reduction=reduction)
        assert np.all(np.isfinite(ours[0])) and np.all(np.isfinite(ours[1]))
        _assert_same(ours, _torch_ctc(*problem, reduction=reduction))


def test_nan_frames_poison_their_sequence_and_frames_past_the_length_are_inert(x64):
    log_probs = np.log(np.random.default_rng(9).dirichlet(np.ones(4), size=(6, 2)))
    labels, lengths, label_lengths = np.array([[1, 2], [3, 3]]), np.array([6, 4]), np.array([2, 2])

    def run(lp):
        def loss(lp):
            return jl.ctc_loss(lp, labels, lengths, label_lengths, reduction="none")

        return np.asarray(loss(lp)), np.asarray(jax.grad(lambda lp: jnp.sum(loss(lp)))(lp))

    clean = run(log_probs)
    poisoned = log_probs.copy()
    poisoned[2, 0, 1] = np.nan  # inside sequence 0
    poisoned[5, 1, :] = np.nan  # past sequence 1's 4 frames
    value, grad = run(poisoned)
    # Sequence 0's gradient is nan on its classes (blank, 1, 2) and 0 on the others.
    assert np.isnan(value[0]) and np.all(np.isnan(grad[:, 0, :3])) and np.all(grad[:, 0, 3] == 0)
    _assert_same((value[1], grad[:, 1]), (clean[0][1], clean[1][:, 1]), rtol=0)


LP = np.zeros((5, 2, 4), np.float32)
Y, N, M = np.array([[1, 2], [3, 1]]), np.array([5, 4]), np.array([2, 1])
Z, ZP, YP = np.zeros((2, 5, 4), np.float32), np.zeros((2, 5)), np.zeros((2, 2))

BAD_CALLS = [
    (lambda: jl.ctc_loss(LP.astype(int), Y, N, M), TypeError, "log_probs must have a floating"),
    (lambda: jl.ctc_loss(LP[0, 0], Y, N, M), ValueError, "log_probs must have shape"),
    (lambda: jl.ctc_loss(LP, Y[:1], N, M), ValueError, "targets must have 2 rows"),
    (lambda: jl.ctc_loss(LP, Y.astype(float), N, M), TypeError, "targets must have an integer"),
    (lambda: jl.ctc_loss(LP, Y, N[:1], M), ValueError, "input_lengths must have shape (2,)"),
    (lambda: jl.ctc_loss(LP, Y, N, M[None]), ValueError, "target_lengths must have 1 dim"),
    (lambda: jl.ctc_loss(LP, Y, [6, 4], M), ValueError, "input_lengths must be in [0, 5]"),
    (lambda: jl.ctc_loss(LP, Y, [-1, 4], M), ValueError, "input_lengths must be in [0, 5]"),
    (lambda: jl.ctc_loss(LP, Y, N, [3, 1]), ValueError, "target_lengths must be in [0, 2]"),
    (lambda: jl.ctc_loss(LP, Y, N, M, blank=4), ValueError, "blank must be a class index"),
    (lambda: jl.ctc_loss(LP, Y, N, M, blank=1.0), TypeError, "blank must be a Python int"),
    (lambda: jl.ctc_loss(LP, Y, N, M, reduction="batchmean"), ValueError, "reduction must be"),
    (lambda: jl.ctc_loss(LP, Y, N, M, zero_infinity=1), TypeError, "zero_infinity must be"),
    (lambda: jl.ctc_loss(LP[:, 0], Y[0], N, 2), ValueError, "input_lengths must have 0 dim"),
    (lambda: jl.ctc_loss_with_paddings(LP[0], ZP, Y, YP), ValueError, "logits must have shape"),
    (lambda: jl.ctc_loss_with_paddings(Z, ZP[:, :4], Y, YP), ValueError, "logit_paddings must"),
    (lambda: jl.ctc_loss_with_paddings(Z, ZP, Y, YP[:, :1]), ValueError, "label_paddings must"),
    (lambda: jl.ctc_loss_with_paddings(Z, ZP + 0.5, Y, YP), ValueError, "only 0 and 1"),
    (lambda: jl.ctc_loss_with_paddings(Z, ZP, Y, [[1, 0], [0, 0]]), ValueError, "right-padded"),
    (lambda: jl.ctc_loss_with_paddings(Z, ZP, Y[:1], YP[:1]), ValueError, "labels must have 2"),
]


@pytest.mark.parametrize("index", range(len(BAD_CALLS)))
def test_bad_arguments_raise_naming_them(index):
    call, error, message = BAD_CALLS[index]
    with pytest.raises(error, match=re.escape(message)):
        call()


def test_unbatched_call_is_the_batch_of_one(x64):
    logits, labels, lengths, label_lengths = _problem(10, 7, 2, 5, 3)
    log_probs = jl.log_softmax(jnp.asarray(logits))
    for reduction in ("mean", "sum", "none"):
        got = jax.value_and_grad(
            lambda lp: jl.ctc_loss(lp, labels[1], lengths[1], label_lengths[1], reduction=reduction)
        )(log_probs[:, 1])
        want = jax.value_and_grad(
            lambda lp: jnp.sum(
                jl.ctc_loss(lp, labels[1:], lengths[1:], label_lengths[1:], reduction=reduction)
            )  # fmt: skip
        )(log_probs[:, 1:])
        assert got[0].shape == ()
        _assert_same(got, (want[0], want[1][:, 0]), rtol=1e-14)


@pytest.mark.exhaustive
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_is_accumulated_in_float32(dtype):
    logits, labels, lengths, label_lengths = _problem(11, 60, 3, 8, 10, blank=2)
    labels = np.where(labels < 0, 1, labels)
    log_probs = jl.log_softmax(jnp.asarray(logits, dtype))

    def loss(lp):
        return jl.ctc_loss(lp, labels, lengths, label_lengths, blank=2, reduction="sum")

    value, grad = jax.value_and_grad(loss)(log_probs)
    want, want_grad = jax.value_and_grad(loss)(log_probs.astype(jnp.float32))
    assert value.dtype == dtype and grad.dtype == dtype
    # One rounding of the float32 result: a float16/bfloat16 recursion would be far off.
    np.testing.assert_allclose(np.float32(value), want, rtol=float(jnp.finfo(dtype).eps))
    np.testing.assert_allclose(np.float32(grad), want_grad, atol=float(jnp.finfo(dtype).eps))


@pytest.mark.exhaustive
def test_vmap_jacfwd_checkpoint_and_scan_go_through_the_rule(x64):
    logits, labels, lengths, label_lengths = _problem(12, 6, 3, 4, 2)
    labels = np.abs(labels) % 3 + 1
    stacked = jnp.stack([jnp.asarray(logits), jnp.asarray(logits[::-1])])

    def loss(lp):
        return jl.ctc_loss(lp, labels, lengths, label_lengths)

    got = jax.vmap(jax.value_and_grad(loss))(stacked)
    for i in range(2):
        _assert_same((got[0][i], got[1][i]), jax.value_and_grad(loss)(stacked[i]), rtol=1e-13)
    grad = got[1][0]
    _assert_same((jax.jacfwd(loss)(stacked[0]),), (grad,), rtol=1e-12)
    _assert_same((jax.grad(jax.checkpoint(loss))(stacked[0]),), (grad,), rtol=1e-13)
    scanned = jax.grad(lambda x: jax.lax.scan(lambda c, lp: (c + loss(lp), None), 0.0, x)[0])
    _assert_same((scanned(stacked),), (got[1],), rtol=1e-13)


def test_memory_is_linear_in_frames_batch_and_states_not_classes():
    # The lattice is T x B x (2S + 1); the gradient is the input's size. A temporary of
    # T x B x S x C (a one-hot of the labels, say) would be 8 MiB here.
    frames, batch, classes, max_length = 100, 4, 500, 40
    lp = jax.ShapeDtypeStruct((frames, batch, classes), jnp.float32)
    ints = (
        jax.ShapeDtypeStruct((batch, max_length), jnp.int32),
        jax.ShapeDtypeStruct((batch,), jnp.int32),
    )

    def loss(lp, y, n):
        return jl.ctc_loss(lp, y, n, n // 4)

    compiled = jax.jit(jax.value_and_grad(loss)).lower(lp, *ints).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    lattice = frames * batch * (2 * max_length + 1) * 4
    gradient = frames * batch * classes * 4
    assert temp <= 8 * lattice + 2 * gradient, (temp, lattice, gradient)


def test_empty_axes_and_a_single_class(x64):
    def value_and_grad(log_probs, *args, **kwargs):
        def loss(lp):
            return jnp.sum(jl.ctc_loss(lp, *args, **kwargs))

        return jax.value_and_grad(loss)(jnp.asarray(log_probs))

    # No frames: the empty target's loss is 0, any other is inf.
    value, grad = value_and_grad(np.zeros((0, 2, 3)), np.ones((2, 1), int), [0, 0], [0, 1])
    assert value == np.inf and grad.shape == (0, 2, 3)
    # No sequences: a mean over nothing is 0, as elsewhere in jaxloss.
    empty = np.zeros(0, int)
    value, grad = value_and_grad(np.zeros((4, 0, 3)), np.zeros((0, 2), int), empty, empty)
    assert value == 0.0 and grad.shape == (4, 0, 3)
    # Only the blank class: the empty target is certain.
    value, grad = value_and_grad(np.zeros((3, 1, 1)), np.zeros((1, 1), int), [3], [0])
    assert value == 0.0 and np.all(grad == -1.0)


@pytest.mark.exhaustive
@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.uint32, np.int64])
def test_every_integer_dtype_gives_the_int32_result(x64, dtype):
    logits, labels, lengths, label_lengths = _problem(13, 8, 3, 5, 3)
    labels = np.abs(labels) % 4 + 1
    want = _ours(logits, labels, lengths, label_lengths, reduction="none")
    cast = [a.astype(dtype) for a in (labels, lengths, label_lengths)]
    _assert_same(_ours(logits, *cast, reduction="none"), want, rtol=0)


def test_a_wide_label_never_wraps_into_a_class(x64):
    # 2**32 + 1 is 1 after a cast to 32 bits; it is out of range, so nan.
    labels = np.array([[2**32 + 1], [1]], np.int64)
    loss = jl.ctc_loss(np.zeros((3, 2, 4)), labels, [3, 3], [1, 1], reduction="none")
    assert np.isnan(loss[0]) and np.isfinite(loss[1])


def _float32_gradient_error(fn, logits, labels):
    """The largest relative error of the float32 gradient of the summed loss with
    respect to the logits, against float64, over entries above 1e-3."""

    def gradient(dtype):
        z = jnp.asarray(logits, dtype)
        pads, label_pads = jnp.zeros(z.shape[:2], dtype), jnp.zeros(labels.shape, dtype)
        step = jax.jit(jax.grad(lambda z: fn(z, pads, jnp.asarray(labels), label_pads).sum()))
        return np.asarray(step(z), np.float64)

    exact = gradient(jnp.float64)
    big = np.abs(exact) > 1e-3
    return float(np.max(np.abs(gradient(jnp.float32) - exact)[big] / np.abs(exact)[big]))


@pytest.mark.exhaustive
@pytest.mark.parametrize("frames", [50, 200, 1000, 2000])
def test_float32_gradient_is_as_accurate_as_optax(x64, frames):
    """C = 30 classes, labels a third of the frames long: no more than twice optax's
    error (autodiff through its scan) or 1e-4, whichever is larger."""
    optax = pytest.importorskip("optax")
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, frames, 30))
    labels = rng.integers(1, 30, (2, frames // 3))
    ours = _float32_gradient_error(jl.ctc_loss_with_paddings, logits, labels)
    theirs = _float32_gradient_error(optax.ctc_loss, logits, labels)
    assert ours <= max(2 * theirs, 1e-4), (ours, theirs)


@pytest.mark.exhaustive
def test_each_frames_occupancies_sum_to_one_in_float32():
    rng = np.random.default_rng(1)
    z = rng.standard_normal((1000, 1, 30))
    log_probs = jnp.asarray(z - np.log(np.exp(z).sum(-1, keepdims=True)), jnp.float32)
    labels = jnp.asarray(rng.integers(1, 30, (1, 333)))
    grad = jax.grad(lambda lp: jl.ctc_loss(lp, labels, jnp.array([1000]), jnp.array([333]),
                                           reduction="sum"))(log_probs)  # fmt: skip
    np.testing.assert_allclose(grad.sum(-1), -1.0, atol=1e-6)


def test_padded_frames_are_not_read():
    """A nan logit on a padded frame changes neither the loss nor the gradient, which
    is 0 on that frame (the log-softmax of a padded frame is not formed)."""
    z = jnp.asarray(np.random.default_rng(2).standard_normal((1, 4, 5)), jnp.float32)
    paddings, labels = jnp.array([[0.0, 0.0, 0.0, 1.0]]), jnp.array([[1, 2]])

    def f(z):
        return jl.ctc_loss_with_paddings(z, paddings, labels, jnp.zeros((1, 2))).sum()

    clean_value, clean_grad = jax.value_and_grad(f)(z)
    value, grad = jax.value_and_grad(f)(z.at[0, 3].set(jnp.nan))
    np.testing.assert_array_equal(value, clean_value)
    np.testing.assert_array_equal(grad, clean_grad)
    assert np.all(grad[0, 3] == 0)


def test_an_impossible_alignment_reads_nothing_of_the_target_padding():
    """Three repeats of class 1 need five frames: with four, the loss is inf and the
    gradient nan on the blank and class 1, and 0 on class 4, which occurs only past the
    target length."""
    z = np.random.default_rng(3).standard_normal((4, 1, 5))
    log_probs = jnp.asarray(z - np.log(np.exp(z).sum(-1, keepdims=True)))
    targets = jnp.array([[1, 1, 1, 4]])

    def f(lp):
        return jl.ctc_loss(lp, targets, jnp.array([4]), jnp.array([3]), reduction="sum")

    value, grad = jax.value_and_grad(f)(log_probs)
    assert value == jnp.inf
    assert np.all(np.isnan(grad[:, 0, :2])) and np.all(grad[:, 0, 2:] == 0)


def test_traced_label_paddings_that_are_not_right_padded_give_nan():
    """Checked when known (ValueError); under jit the sequence's loss is nan."""
    z = jnp.asarray(np.random.default_rng(4).standard_normal((2, 4, 5)), jnp.float32)
    labels, frames = jnp.array([[1, 2], [3, 4]]), jnp.zeros((2, 4))
    with pytest.raises(ValueError, match="right-padded"):
        jl.ctc_loss_with_paddings(z, frames, labels, jnp.array([[1.0, 0.0], [0.0, 0.0]]))
    loss = jax.jit(lambda p: jl.ctc_loss_with_paddings(z, frames, labels, p))(
        jnp.array([[1.0, 0.0], [0.0, 1.0]])
    )
    assert np.isnan(loss[0]) and np.isfinite(loss[1])
