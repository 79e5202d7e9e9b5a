"""The docs' statements about behaviour, each an assertion that runs.

Every entry of ``CLAIMS`` quotes a passage of a page verbatim (whitespace aside) and
checks what it says: about jaxloss, PyTorch (skipped without it) or optax (skipped
without it). ``test_every_quoted_passage_is_in_its_page`` fails when the page no
longer says it, so text and check move together. The formulas of docs/gradients.md
are checked in float64 against ``jax.grad``/``jax.hessian``; the measured tables of
docs/benchmarks.md and docs/large-vocab.md are rendered from docs/measurements/*.json
and must appear in the pages as they are, with no other figure in those sections.

Statements checked elsewhere name their test: docs/pytorch.md's tables
(tests/test_pytorch.py), offsets, dtypes, nan and ignored elements
(tests/test_properties.py), sharding (tests/test_sharding.py), the CIFAR-10 example
(examples/cifar10/train_test.py); every python block of every page runs in
tests/test_docs.py.
"""

import ast
import json
import pathlib
import re
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxloss as jl
from benchmarks import cli, measure
from benchmarks import ctc as ctc_suite
from benchmarks import lm as lm_suite
from benchmarks.report import report
from jaxloss._fused.engine import CHUNK_BYTES, Config, auto_chunk_size
from tests import builders as build

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CLAIMS = []


def claim(page, *passages):
    """Registers a check of ``passages`` (quoted from ``page``)."""

    def register(check):
        CLAIMS.append((page, passages, check))
        return check

    return register


def _normalized(text):
    return re.sub(r"\s+", " ", text)


def _page(page):
    return (ROOT / page).read_text()


def _close(a, b, tol=1e-10):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


# --- docs/gradients.md ---------------------------------------------------------------


@claim("docs/gradients.md", r"\frac{\partial y_i}{\partial x_j} = \delta_{ij} - p_j")
def log_softmax_jacobian():
    x = build.logits((5,))
    p = jax.nn.softmax(x)
    _close(jax.jacobian(jl.log_softmax)(x), jnp.eye(5) - p[None, :])


@claim("docs/gradients.md", r"the Jacobian $\operatorname{diag}(p) - p p^\top$")
def softmax_jacobian():
    x = build.logits((5,))
    p = jax.nn.softmax(x)
    _close(jax.jacobian(jl.softmax)(x), jnp.diag(p) - jnp.outer(p, p))


def _table_coefficients(x, kind, w, eps, y=None, t=None):
    """The coefficient table of docs/gradients.md, row by row."""
    c = x.shape[-1]
    if kind == "index":
        return w[y][:, None] * jax.nn.one_hot(y, c, dtype=x.dtype)
    if kind == "index smoothed":
        return (1 - eps) * w[y][:, None] * jax.nn.one_hot(y, c, dtype=x.dtype) + eps / c * w
    if kind == "probs":
        return w * t
    return w * ((1 - eps) * t + eps / c)


@claim(
    "docs/gradients.md",
    r"\frac{\partial \ell}{\partial x_i} = \frac{w_y}{C}\, p\, z_i^{p-1} [z_i > 0]"
    r" \quad (i \ne y),",
    "and for `multilabel_margin_loss` each active pair $(j, i)$ adds $1/C$ to",
    r"their gradient is $e_{k^*} - e_y$, where $k^*$ is $y$ when $y$ attains the maximum",
    r"`soft_margin_loss` is $-\log\sigma(t x)$, with gradient $-t\,\sigma(-t x)$",
    r"gradient $w_i(\sigma(x_i) - t_i)/C$",
    "| `hinge_embedding_loss`, $t = -1$ | $m - x$ | 1 (so $\\partial\\ell/\\partial x = -1$) |",
)
def margin_gradients():
    rng = np.random.default_rng(9)
    x, y = rng.normal(size=(3, 4)), np.array([0, 2, 3])
    w, m, c = rng.uniform(0.5, 2.0, size=4), 0.6, 4
    for p in (1, 2):
        z = m - x[np.arange(3), y][:, None] + x
        slope = w[y][:, None] / c * p * np.where(z > 0, z, 0.0) ** (p - 1) * (z > 0)
        slope[np.arange(3), y] = 0.0
        slope[np.arange(3), y] = -slope.sum(-1)
        grad = jax.grad(
            lambda v: jl.multi_margin_loss(v, y, p=p, margin=m, weight=w, reduction="sum")
        )
        _close(grad(x), slope)
    lists = np.array([[0, 2, -1, 0], [3, -1, 0, 0], [1, 0, 2, 3]])
    member = np.zeros((3, 4), bool)
    member[0, [0, 2]] = member[1, 3] = member[2, :] = True
    want = np.zeros((3, 4))
    for n, j, i in np.ndindex(3, 4, 4):
        if member[n, j] and not member[n, i] and 1 - x[n, j] + x[n, i] > 0:
            want[n, i] += 1 / c
            want[n, j] -= 1 / c
    _close(jax.grad(lambda v: jl.multilabel_margin_loss(v, lists, reduction="sum"))(x), want)
    for name, margin in [("multiclass_hinge_loss", 1.0), ("multiclass_perceptron_loss", 0.0)]:
        shifted = x + margin * (np.arange(4) != y[:, None])
        winner = np.where(shifted[np.arange(3), y] >= shifted.max(-1), y, shifted.argmax(-1))
        want = np.eye(4)[winner] - np.eye(4)[y]
        loss = getattr(jl, name)
        _close(jax.grad(lambda v, loss=loss: loss(v, y, reduction="sum"))(x), want)
    t = np.sign(rng.normal(size=(3, 4)))
    sigmoid = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    _close(jax.grad(lambda v: jl.soft_margin_loss(v, t, reduction="sum"))(x), -t * sigmoid(-t * x))
    probs = rng.uniform(size=(3, 4))
    grad = jax.grad(lambda v: jl.multilabel_soft_margin_loss(v, probs, weight=w, reduction="sum"))
    _close(grad(x), w * (sigmoid(x) - probs) / c)
    at_margin = jax.grad(
        lambda v: jl.hinge_embedding_loss(v, -jnp.ones(2), margin=0.5, reduction="sum")
    )
    _close(at_margin(jnp.array([0.5, 0.7])), [-1.0, 0.0])


@claim(
    "docs/gradients.md",
    r"the Jacobian is $\operatorname{diag}(s) - s s^\top/|S|$ with $s$ the support's indicator.",
    r"so by Danskin's theorem $\partial\ell/\partial x = p - e_y$",
    r"has $\partial\ell/\partial x = \mathrm{clip}((x + 1)/2, 0, 1) - t$, continuous at $|x| = 1$,"
    r" and $\partial\ell/\partial t = -x$.",
)
def sparsemax_gradients():
    x = jnp.array([[0.9, 0.5, -1.0, 0.7], [2.0, -1.0, 0.0, 0.1]])
    for row in x:
        s = np.asarray(jl.sparsemax(row) > 0) * 1.0
        _close(jax.jacobian(jl.sparsemax)(row), np.diag(s) - np.outer(s, s) / s.sum())
    y = jnp.array([3, 0])
    grad = jax.grad(lambda v: jl.multiclass_sparsemax_loss(v, y, reduction="sum"))(x)
    _close(grad, jl.sparsemax(x) - jax.nn.one_hot(y, 4))
    t = jnp.array([[0.0, 0.3, 1.0, 0.5], [1.0, 1.0, 0.0, 0.2]])
    dx, dt = jax.grad(lambda v, u: jl.sparsemax_loss(v, u, reduction="sum"), (0, 1))(x, t)
    _close(dx, jnp.clip((x + 1) / 2, 0, 1) - t)
    _close(dt, -x)


@claim(
    "docs/gradients.md",
    r"\frac{\partial \ell}{\partial I} = \frac{1}{D}\Big(\frac{N}{D}(1 - \alpha - \beta) - 1\Big),",
    r"\frac{\partial \ell}{\partial P} = \frac{N\alpha}{D^2},",
    r"\frac{\partial \ell}{\partial T} = \frac{N\beta}{D^2},",
    r"($\partial\ell/\partial s = (N/D - 1)/D$). Where $D = 0$ (no target, no predicted"
    r" mass, $s = 0$) the loss is defined as 0 with a zero gradient.",
)
def tversky_gradients():
    rng = np.random.default_rng(11)
    p, t = jnp.asarray(rng.uniform(size=6)), jnp.asarray(rng.uniform(size=6))
    alpha, beta, s = 0.3, 0.6, 0.4

    def loss(p, t, alpha, beta, s):
        return jl.tversky_loss(p, t, alpha=alpha, beta=beta, smooth=s, axis=None,
                               from_logits=False, per_sample=False)  # fmt: skip

    i, big_p, big_t = jnp.sum(p * t), jnp.sum(p), jnp.sum(t)
    n, d = i + s, i + alpha * (big_p - i) + beta * (big_t - i) + s
    d_i, d_p, d_t = (n / d * (1 - alpha - beta) - 1) / d, n * alpha / d**2, n * beta / d**2
    grads = jax.grad(loss, argnums=(0, 1, 4))(p, t, alpha, beta, s)
    _close(grads[0], t * d_i + d_p)
    _close(grads[1], p * d_i + d_t)
    _close(grads[2], (n / d - 1) / d)
    zeros = jnp.zeros(3)
    value, grad = jax.value_and_grad(loss)(zeros, zeros, alpha, beta, 0.0)
    assert value == 0.0 and np.all(grad == 0.0)


def _ctc_posteriors_by_enumeration(log_probs, labels, blank=0):
    """P and the posterior of each class at each frame, from every path of classes
    (C^T of them) whose collapse (merge repeats, drop blanks) is ``labels``."""
    import itertools

    frames, classes = log_probs.shape
    total, counts = 0.0, np.zeros((frames, classes))
    for path in itertools.product(range(classes), repeat=frames):
        collapsed = [c for i, c in enumerate(path) if c != blank and (i == 0 or c != path[i - 1])]
        if collapsed == list(labels):
            prob = np.exp(sum(log_probs[t, c] for t, c in enumerate(path)))
            total += prob
            counts[np.arange(frames), list(path)] += prob
    return total, counts / total


@claim(
    "docs/gradients.md",
    r"\frac{\partial \ell}{\partial \log p_t(c)} = -\gamma_t(c),",
    "the posterior probability that frame $t$ emits class $c$.",
    r"so $\sum_c \gamma_t(c) = 1$: each frame's gradient sums to $-1$, whatever the inputs "
    "(they need not be normalized). Frames past the input length get 0.",
    r"$\partial\ell/\partial z_t(c) = p_t(c)\sum_k \gamma_t(k) - \gamma_t(c)"
    r" = p_t(c) - \gamma_t(c)$.",
    "PyTorch's `ctc_loss` returns this, $e^{\\log p_t(c)} - \\gamma_t(c)$, as its gradient with "
    "respect to `log_probs` itself",
)
def ctc_gradient_is_minus_the_posterior():
    rng = np.random.default_rng(0)
    log_probs = rng.normal(size=(5, 1, 3)) - 1.0  # not normalized
    labels, frames = [1, 1], 4  # one frame past the input length
    total, posterior = _ctc_posteriors_by_enumeration(log_probs[:frames, 0], labels)

    def loss(lp):
        return jl.ctc_loss(lp, jnp.array([labels]), jnp.array([frames]), jnp.array([2]),
                                      reduction="sum")  # fmt: skip

    value, grad = jax.value_and_grad(loss)(jnp.asarray(log_probs))
    _close(value, -np.log(total))
    _close(grad[:frames, 0], -posterior)
    _close(grad[frames:], 0.0)
    _close(grad[:frames].sum(-1), -1.0)
    normalized = jax.nn.log_softmax(jnp.asarray(log_probs))
    _, posterior = _ctc_posteriors_by_enumeration(np.asarray(normalized)[:frames, 0], labels)
    through_softmax = jax.grad(lambda z: loss(jax.nn.log_softmax(z)))(jnp.asarray(log_probs))
    _close(through_softmax[:frames, 0], np.exp(normalized[:frames, 0]) - posterior)
    torch = pytest.importorskip("torch")
    lp = torch.tensor(np.asarray(normalized), requires_grad=True)
    torch.nn.functional.ctc_loss(lp, torch.tensor([labels]), torch.tensor([frames]),
                                 torch.tensor([2]), reduction="sum").backward()  # fmt: skip
    _close(lp.grad.numpy()[:frames, 0], np.exp(normalized[:frames, 0]) - posterior)


@claim(
    "docs/gradients.md",
    r"\ell = \sum_c a_c\,(-\log p_c) = \sum_c a_c\,(\operatorname{lse}(x) - x_c).",
    r"| index $y$, smoothing $\varepsilon$ |",
    r"$(1-\varepsilon)\,w_y\,[c = y] + \frac{\varepsilon}{K} w_c$ |",
    r"| probabilities $t$, smoothing $\varepsilon$ |",
    r"$w_c\big((1-\varepsilon)t_c + \frac{\varepsilon}{K}\big)$ |",
    r"\frac{\partial \ell}{\partial x_j} = \sum_c a_c (p_j - [c = j]) = S\,p_j - a_j,",
)
def coefficient_table_and_logit_gradient():
    x, t = build.logits((4, 5)), build.probabilities((4, 5))
    y = jnp.array([0, 3, 4, 1])
    w = jnp.array([0.5, 1.0, 2.0, 1.5, 0.7])
    lse = jax.nn.logsumexp(x, axis=-1, keepdims=True)
    p = jax.nn.softmax(x)
    for kind in ("index", "index smoothed", "probs", "probs smoothed"):
        eps = 0.2 if "smoothed" in kind else 0.0
        targets = y if kind.startswith("index") else t
        a = _table_coefficients(x, kind, w, eps, y, t)

        def loss(v, targets=targets, eps=eps):
            return jl.cross_entropy(v, targets, weight=w, label_smoothing=eps, reduction="none")

        _close(loss(x), jnp.sum(a * (lse - x), axis=-1))
        grad = jax.grad(lambda v: jnp.sum(loss(v)))(x)
        _close(grad, a.sum(-1, keepdims=True) * p - a)
    ignored = jl.cross_entropy(x, y.at[1].set(-100), weight=w, reduction="none")
    assert ignored[1] == 0.0  # the `ignore_index` row: a = 0


@claim(
    "docs/gradients.md",
    r"\ell = (1-\varepsilon)\,w_y\big((m - x_y) + \log s\big)",
    r"+ \frac{\varepsilon}{K}\Big(\sum_{c \in L} w_c (m - x_c) + W \log s\Big),",
    r"For probability targets the loss is $S\log s + \sum_c a_c (m - x_c)$",
)
def evaluated_forms():
    x = build.logits((4, 5)).at[2, 1].set(-jnp.inf)  # one class not live in row 2
    y = jnp.array([0, 3, 4, 1])
    w = jnp.array([0.5, 1.0, 2.0, 1.5, 0.7])
    eps = 0.3
    m = jnp.max(x, axis=-1)
    s = jnp.sum(jnp.exp(x - m[:, None]), axis=-1)
    live = jnp.isfinite(x)
    k = live.sum(-1)
    big_w = jnp.sum(jnp.where(live, w, 0.0), axis=-1)
    x_y = jnp.take_along_axis(x, y[:, None], axis=1)[:, 0]
    shifted = jnp.sum(jnp.where(live, w * (m[:, None] - x), 0.0), axis=-1)
    want = (1 - eps) * w[y] * ((m - x_y) + jnp.log(s)) + eps / k * (shifted + big_w * jnp.log(s))
    got = jl.cross_entropy(x, y, weight=w, label_smoothing=eps, reduction="none")
    _close(got, want)
    t = build.probabilities((4, 5)).at[2, 1].set(0.0)  # no mass on the -inf class
    a = w * t
    want = a.sum(-1) * jnp.log(s) + jnp.sum(jnp.where(a != 0, a * (m[:, None] - x), 0.0), -1)
    _close(jl.cross_entropy(x, t, weight=w, reduction="none"), want)


@claim(
    "docs/gradients.md",
    r"\frac{\partial \ell}{\partial t_c} = -(1-\varepsilon)\,w_c \log p_c, \qquad",
    r"\frac{\partial \ell}{\partial \varepsilon} =",
    r"\sum_c \big(a^{(0)}_c - \tfrac{w_c}{K}\big) \log p_c,",
)
def target_and_smoothing_derivatives():
    x, t = build.logits((3, 4)), build.probabilities((3, 4))
    w = jnp.array([0.5, 1.0, 2.0, 1.5])
    eps = 0.2
    log_p = jax.nn.log_softmax(x)

    def loss(t, eps):
        return jl.cross_entropy(x, t, weight=w, label_smoothing=eps, reduction="sum")

    d_t, d_eps = jax.grad(loss, argnums=(0, 1))(t, eps)
    _close(d_t, -(1 - eps) * w * log_p)
    _close(d_eps, jnp.sum((w * t - w / 4) * log_p))


@claim(
    "docs/gradients.md",
    r"$S\,(\operatorname{diag}(p) - p p^\top)$",
    r"When $D = 0$ the mean is defined as 0 with zero gradient.",
)
def hessian_and_denominator():
    x = build.logits((4,))
    w = jnp.array([0.5, 1.0, 2.0, 1.5])
    t = build.probabilities((4,))
    p = jax.nn.softmax(x)
    hess = jax.hessian(lambda v: jl.cross_entropy(v, t, weight=w, label_smoothing=0.1))(x)
    big_s = jnp.sum(w * (0.9 * t + 0.1 / 4))
    _close(hess, big_s * (jnp.diag(p) - jnp.outer(p, p)))
    rows = build.logits((3, 4))
    loss, grad = jax.value_and_grad(jl.cross_entropy)(rows, jnp.array([0, 0, 0]), weight=w * 0)
    assert loss == 0.0 and np.all(np.asarray(grad) == 0.0)


@claim(
    "docs/gradients.md",
    r"so the z-loss $z\,\operatorname{lse}^2$ has",
    r"gradient $2 z \operatorname{lse}\cdot p$. Soft-capping $x \mapsto c\tanh(x/c)$ multiplies",
    r"the incoming gradient by $1 - \tanh^2(x/c)$.",
)
def z_loss_and_softcap():
    x = build.logits((3, 5))
    y = jnp.array([0, 4, 2])
    z, cap = 0.01, 3.0
    p = jax.nn.softmax(x)
    lse = jax.nn.logsumexp(x, axis=-1, keepdims=True)
    grad = jax.grad(lambda v: jl.cross_entropy(v, y, z_loss=z, reduction="sum"))(x)
    _close(grad, p - jax.nn.one_hot(y, 5) + 2 * z * lse * p)
    capped = cap * jnp.tanh(x / cap)
    grad = jax.grad(lambda v: jl.cross_entropy(v, y, logit_softcap=cap, reduction="sum"))(x)
    inner = jax.nn.softmax(capped) - jax.nn.one_hot(y, 5)
    _close(grad, inner * (1 - jnp.tanh(x / cap) ** 2))


@claim(
    "docs/gradients.md",
    r"$\partial\ell/\partial \log p_c = -a_c$, $\partial\ell/\partial a_c = -\log p_c$.",
)
def nll_derivatives():
    log_p = jax.nn.log_softmax(build.logits((3, 4)))
    y = jnp.array([1, 0, 3])
    w = jnp.array([0.5, 1.0, 2.0, 1.5])
    d_lp, d_w = jax.grad(
        lambda lp, w: jl.nll_loss(lp, y, weight=w, reduction="sum"), argnums=(0, 1)
    )(log_p, w)
    _close(d_lp, -w[y][:, None] * jax.nn.one_hot(y, 4))
    picked = jnp.take_along_axis(log_p, y[:, None], 1)[:, 0]
    _close(d_w, jnp.zeros(4).at[y].add(-picked))


@claim(
    "docs/gradients.md",
    r"\frac{\partial \ell}{\partial x} = w\big(-p_w t (1 - \sigma(x)) + (1-t)\sigma(x)\big)",
    r"= w\big((1 + (p_w - 1)t)\,\sigma(x) - p_w t\big),",
    r"$\partial\ell/\partial w = \ell/w$ and",
    r"$\partial\ell/\partial p_w = w\,t\operatorname{softplus}(-x)$.",
)
def bce_with_logits_derivatives():
    x = build.logits((6,), scale=4.0)
    t = build.uniform((6,), 3, jnp.float64)
    w = build.uniform((6,), 4, jnp.float64, 0.5, 2.0)
    pw = jnp.full((6,), 1.7)

    def per(x, t, w, pw):
        return jl.binary_cross_entropy_with_logits(x, t, weight=w, pos_weight=pw, reduction="none")

    d_x, d_t, d_w, d_pw = jax.grad(lambda *a: jnp.sum(per(*a)), argnums=(0, 1, 2, 3))(x, t, w, pw)
    sig = jax.nn.sigmoid(x)
    sp = jax.nn.softplus
    _close(d_x, w * (-pw * t * (1 - sig) + (1 - t) * sig))
    _close(d_x, w * ((1 + (pw - 1) * t) * sig - pw * t))
    _close(d_t, w * (pw * sp(-x) - sp(x)))
    _close(d_w, per(x, t, w, pw) / w)
    _close(d_pw, w * t * sp(-x))


@claim(
    "docs/gradients.md",
    r"which is $w\,(p - t)/(p(1-p))$ away from the clamps.",
    r"A clamped logarithm is constant, so its term contributes nothing:",
)
def bce_derivative():
    p = build.uniform((6,), 5, jnp.float64, 0.01, 0.99)
    t = build.uniform((6,), 6, jnp.float64)
    w = jnp.linspace(0.5, 2.0, 6)
    grad = jax.grad(lambda q: jl.binary_cross_entropy(q, t, weight=w, reduction="sum"))(p)
    _close(grad, w * (p - t) / (p * (1 - p)))
    at_zero = jax.grad(lambda q: jl.binary_cross_entropy(q, jnp.array([0.3]), reduction="sum"))
    # log 0 is clamped: only the (1 - t) / (1 - p) term remains
    _close(at_zero(jnp.array([0.0])), jnp.array([0.7]))


@claim(
    "docs/gradients.md",
    r"$\partial\ell/\partial \log q = -t$ and $\partial\ell/\partial t = \log t + 1 - \log q$,",
    r"taken as 0 at $t = 0$",
    r"$\partial\ell/\partial\log q = -e^s$, $\partial\ell/\partial s = e^s(s - \log q + 1)$.",
)
def kl_derivatives():
    log_q = jax.nn.log_softmax(build.logits((2, 4)))
    t = build.probabilities((2, 4)).at[0, 0].set(0.0)
    d_q, d_t = jax.grad(lambda q, t: jl.kl_div(q, t, reduction="sum"), argnums=(0, 1))(log_q, t)
    _close(d_q, -t)
    _close(d_t, jnp.where(t == 0, 0.0, jnp.log(jnp.where(t == 0, 1.0, t)) + 1 - log_q))
    s = jnp.log(build.probabilities((2, 4), seed=7))
    d_q, d_s = jax.grad(
        lambda q, s: jl.kl_div(q, s, reduction="sum", log_target=True), argnums=(0, 1)
    )(log_q, s)
    _close(d_q, -jnp.exp(s))
    _close(d_s, jnp.exp(s) * (s - log_q + 1))


# --- docs/backends.md ------------------------------------------------------------------

SMALL_X = jax.ShapeDtypeStruct((8, 16), jnp.float32)
SMALL_Y = jax.ShapeDtypeStruct((8,), jnp.int32)


def _tpu_module(fn, *shapes):
    return jax.export.export(jax.jit(fn), platforms=["tpu"])(*shapes).mlir_module()


@claim(
    "docs/backends.md",
    "`log_softmax`, `softmax`, `log_sigmoid`, `nll_loss`, `cross_entropy` (index and",
    "`dot_general`, so the matmul precision setting does not touch them.",
)
def no_matmul_outside_linear():
    losses = [
        (lambda x: jl.log_softmax(x).sum(), (SMALL_X,)),
        (lambda x: jl.softmax(x)[:, 0].sum(), (SMALL_X,)),
        (lambda x: jl.log_sigmoid(x).sum(), (SMALL_X,)),
        (lambda x, y: jl.nll_loss(x, y), (SMALL_X, SMALL_Y)),
        (lambda x, y: jl.cross_entropy(x, y, label_smoothing=0.1), (SMALL_X, SMALL_Y)),
        (lambda x, t: jl.cross_entropy(x, t, label_smoothing=0.1), (SMALL_X, SMALL_X)),
        (lambda x, t: jl.binary_cross_entropy_with_logits(x, t), (SMALL_X, SMALL_X)),
        (lambda p, t: jl.binary_cross_entropy(p, t), (SMALL_X, SMALL_X)),
        (lambda q, t: jl.kl_div(q, t), (SMALL_X, SMALL_X)),
    ]
    for fn, shapes in losses:
        assert "stablehlo.dot_general" not in _tpu_module(jax.value_and_grad(fn), *shapes)


@claim(
    "docs/backends.md",
    "They use JAX's default matmul precision, exactly as `x @ w` in your own code does:",
    "`precision = [HIGHEST, HIGHEST]` on all of",
)
def linear_matmul_precision():
    w = jax.ShapeDtypeStruct((16, 32), jnp.float32)
    fn = jax.value_and_grad(lambda x, w, y: jl.linear_cross_entropy(x, w, y), argnums=(0, 1))
    default = _tpu_module(fn, SMALL_X, w, SMALL_Y)
    matmuls = re.compile(r"stablehlo\.dot_general[^\n]*")
    assert len(matmuls.findall(default)) >= 3 and "precision = [" not in default
    plain = _tpu_module(lambda x, w: (x @ w).sum(), SMALL_X, w)
    assert "precision = [" not in plain  # the same default as the user's own matmul
    with jax.default_matmul_precision("highest"):
        highest = _tpu_module(fn, SMALL_X, w, SMALL_Y)
    found = matmuls.findall(highest)
    assert found and all("precision = [HIGHEST, HIGHEST]" in line for line in found)


# --- docs/large-vocab.md ---------------------------------------------------------------


@claim("docs/large-vocab.md", "`N × V × 4` bytes in float32, 4.2 GB at N = 8192, V = 128256,")
def logits_arithmetic():
    assert round(8192 * 128256 * 4 / 1e9, 1) == 4.2


@claim(
    "docs/large-vocab.md",
    "The chunk (`chunk_size` tokens) is chosen automatically as the largest power of",
    "Pass `chunk_size` to override it.",
    "tail is padded with ignored tokens, so any N works.",
)
def automatic_chunk():
    assert CHUNK_BYTES == 16 * 2**20
    for vocab in (1000, 32768, 128256, 256000):
        rows = auto_chunk_size(10**6, vocab)
        assert rows * vocab * 4 <= CHUNK_BYTES < 2 * rows * vocab * 4
        assert rows & (rows - 1) == 0
    x = build.logits((13, 4)).astype(jnp.float32)
    w = build.logits((4, 9), seed=2).astype(jnp.float32)
    y = jnp.arange(13) % 9
    for chunk in (4, 5, 13, 16):
        got = jl.linear_cross_entropy(x, w, y, chunk_size=chunk)
        np.testing.assert_allclose(got, jl.cross_entropy(x @ w, y), rtol=1e-6)


@claim(
    "docs/large-vocab.md",
    "Where the tokens may be split over devices it is rounded up to a multiple of their",
    "number, so that each chunk holds a whole block of every device's rows",
)
def chunk_rounded_to_the_devices():
    # The rounding itself, with the device count JAX would report on 8 devices; the
    # layouts it keeps (explicit sharding runs, automatic gathers nothing) are checked
    # on 8 devices by tests/test_sharding.py (chunk_size=20 in sharded_cases.py).
    x, w = jnp.ones((48, 16)), jnp.ones((16, 64))
    assert Config.resolve(x, w, chunk_size=20).chunk_size == 20
    with mock.patch.object(jax, "device_count", lambda: 8):
        assert [Config.resolve(x, w, chunk_size=c).chunk_size for c in (20, 24, 1)] == [24, 24, 8]
        assert Config.resolve(x, w).chunk_size == 64


@claim(
    "docs/large-vocab.md",
    "Three matmuls: the logits, $G W^\\top$, $x^\\top G$, as many as the unfused loss.",
    "Four matmuls (the logits twice)",
    "Value and gradients cost three matmuls in one pass, four in two.",
    "(four matmuls), still one chunk at a time.",
)
def matmul_counts():
    x, w, y = jnp.ones((64, 8)), jnp.ones((8, 32)), jnp.zeros(64, jnp.int32)
    cases = [("mean", 1, 3), ("sum", 1, 3), ("mean", 2, 4), ("sum", 2, 4), ("none", None, 4)]
    for reduction, passes, want in cases:

        def loss(x, w, reduction=reduction, passes=passes):
            out = jl.linear_cross_entropy(
                x, w, y, reduction=reduction, chunk_size=16, passes=passes
            )
            return jnp.sum(out)

        step = jax.value_and_grad(loss, argnums=(0, 1))
        assert measure.count_matmuls(step, x, w) == want, (reduction, passes)


@claim(
    "docs/large-vocab.md",
    "`passes=None` (the default) takes two passes when `w` is",
    "narrower than the accumulation dtype (bfloat16 or float16, or float32 with float64 `x`),",
)
def default_passes():
    from jaxloss._fused.engine import Config

    def auto_passes(x, w):
        return Config.resolve(x, w).passes

    x32, w32 = jnp.ones((4, 8), jnp.float32), jnp.ones((8, 32), jnp.float32)
    assert auto_passes(x32, w32) == 1
    for dtype in (jnp.bfloat16, jnp.float16):
        assert auto_passes(x32.astype(dtype), w32.astype(dtype)) == 2
        assert auto_passes(x32, w32.astype(dtype)) == 2  # the weight's dtype decides
        assert auto_passes(x32.astype(dtype), w32) == 1
    x64 = x32.astype(jnp.float64)
    assert x64.dtype == jnp.float64  # the claims run with float64 enabled
    assert auto_passes(x64, w32) == 2 and auto_passes(x64, w32.astype(jnp.float64)) == 1


@claim(
    "docs/large-vocab.md",
    "choose. On one device, the second pass's slice width defaults to as many columns as",
    "fit a float32 slice of $\\partial L/\\partial W$ in 16 MiB",
    "or in 1/64 of the gradient's bytes, whichever is larger.",
)
def default_vocab_chunk():
    from jaxloss._fused.engine import auto_vocab_chunk_size

    for hidden, vocab, itemsize in ((512, 65536, 2), (2304, 256000, 2), (4096, 131072, 4)):
        width = auto_vocab_chunk_size(hidden, vocab, itemsize)
        budget = max(CHUNK_BYTES, hidden * vocab * itemsize // 64)
        assert width % 128 == 0 and width * hidden * 4 <= budget < (width + 128) * hidden * 4


@claim(
    "docs/large-vocab.md",
    "Translate `F.linear_cross_entropy(x, W, t, linear_bias=b)` as",
    "`jl.linear_cross_entropy(x, W.T, t, bias=b)`. Its class `weight`, `ignore_index`,",
    "`label_smoothing` and reductions mean what they mean here, and give the same values;",
)
def pytorch_linear_layout():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 4)).astype(np.float32)
    weight = rng.normal(size=(10, 4)).astype(np.float32)  # (V, H), as nn.Linear stores it
    bias = rng.normal(size=(10,)).astype(np.float32)
    t = np.array([1, 2, -100, 9, 0, 3])
    theirs = torch.nn.functional.linear_cross_entropy(
        torch.tensor(x), torch.tensor(weight), torch.tensor(t), linear_bias=torch.tensor(bias)
    )
    ours = jl.linear_cross_entropy(x, weight.T, t, bias=bias)
    np.testing.assert_allclose(ours, theirs.item(), rtol=1e-5)
    class_weight = rng.uniform(0.5, 2.0, size=10).astype(np.float32)
    for reduction in ("mean", "sum", "none"):
        theirs = torch.nn.functional.linear_cross_entropy(
            torch.tensor(x), torch.tensor(weight), torch.tensor(np.where(t == -100, 7, t)),
            weight=torch.tensor(class_weight), ignore_index=7, label_smoothing=0.2,
            reduction=reduction,
        )  # fmt: skip
        ours = jl.linear_cross_entropy(
            x, weight.T, np.where(t == -100, 7, t), weight=class_weight, ignore_index=7,
            label_smoothing=0.2, reduction=reduction,
        )  # fmt: skip
        np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-5, atol=1e-6)


@claim(
    "docs/large-vocab.md",
    "two whose float32 logits fit in 16 MiB, and at least 8 rows: past V = 524,288 the",
    "8 rows are more than 16 MiB (30.5 MiB at V = 10⁶).",
)
def chunk_at_least_eight_rows():
    assert auto_chunk_size(8192, 524288) == 8 and 8 * 524288 * 4 == CHUNK_BYTES
    assert auto_chunk_size(8192, 10**6) == 8
    assert round(8 * 10**6 * 4 / 2**20, 1) == 30.5


@claim(
    "docs/large-vocab.md",
    "soft-capping together (compiled temporaries of 3.3 chunks with one pass and 5.5 with",
    "two at N = 4096, H = 64, V = 32768, against 2.0 and 2.5 without them);",
)
def chunk_buffers_with_options():
    n, h, v = 4096, 64, 32768
    shapes = (
        jax.ShapeDtypeStruct((n, h), jnp.float32),
        jax.ShapeDtypeStruct((h, v), jnp.float32),
        jax.ShapeDtypeStruct((n,), jnp.int32),
    )
    chunk_bytes = auto_chunk_size(n, v) * v * 4
    options = {"label_smoothing": 0.1, "z_loss": 1e-4, "logit_softcap": 30.0}
    for kwargs, want in [({}, (2.0, 2.5)), (options, (3.3, 5.5))]:
        for passes, chunks in zip((1, 2), want, strict=True):

            def loss(x, w, y, passes=passes, kwargs=kwargs):
                return jl.linear_cross_entropy(x, w, y, passes=passes, **kwargs)

            step = jax.jit(jax.value_and_grad(loss, (0, 1))).lower(*shapes).compile()
            measured = step.memory_analysis().temp_size_in_bytes / chunk_bytes
            assert abs(measured - chunks) < 0.05, (kwargs, passes, measured)


@claim(
    "docs/backends.md",
    "| 2026-12-04 | CPU | as above | as above | `python -m benchmarks ctc` |",
    "| 2026-12-01 | CPU | as above | as above | `python -m benchmarks losses` |",
    "| 2026-11-30 | CPU | as above | as above | `python -m benchmarks linear` and `lm` |",
)
def benchmark_dates_are_the_measurements():
    dates = {"cpu-losses.json": "2026-12-01", "cpu-linear.json": "2026-11-30"}
    dates["cpu-ctc.json"] = "2026-12-04"
    dates["cpu-lm.json"] = "2026-11-30"
    for name, date in dates.items():
        assert json.loads((DOCS / "measurements" / name).read_text())["environment"]["date"] == date
    assert "2026-12-01, cpu (cpu x1, x86_64)" in _page("docs/benchmarks.md")
    assert "2026-12-04, cpu (cpu x1, x86_64)" in _page("docs/benchmarks.md")
    assert "2026-11-30, cpu (cpu x1, x86_64)" in _page("docs/large-vocab.md")


@claim(
    "README.md",
    "the loss depends only on the differences within a row, so adding",
    "a constant that the logits hold exactly changes nothing; a shift that rounds the",
    "logits, such as 1e6 added to float32 logits, changes it by that rounding),",
)
def shift_invariance():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(64, 100)), jnp.float32)
    y = jnp.arange(64) % 100
    for shift in (1e4, -1e4, 1024.0):  # exact in float32 on a grid of 1/64
        x_grid = jnp.round(x * 64) / 64
        shifted = x_grid + shift
        assert np.all(np.asarray(shifted - shift) == np.asarray(x_grid))
        assert jl.cross_entropy(shifted, y) == jl.cross_entropy(x_grid, y)
    moved = x + 1e6
    rounded = np.asarray(moved, np.float64) - 1e6  # the logits as float32 holds them
    _close(jl.cross_entropy(moved, y), jl.cross_entropy(jnp.asarray(rounded), y), 1e-6)
    assert jl.cross_entropy(moved, y) != jl.cross_entropy(x, y)


@claim(
    "docs/large-vocab.md",
    "`cross_entropy` spreads label smoothing over the classes",
    "whose logit is finite, while `linear_cross_entropy` spreads it over all `vocab_size`",
    "columns, so a column that a `-inf` bias removes still gets its share and the loss is",
    "`inf`. Pass `vocab_size` to leave columns out.",
)
def smoothing_over_a_minus_inf_bias():
    x, w, y = jnp.eye(3, 4), jnp.eye(4, 5), jnp.array([1, 0, 2])
    bias = jnp.array([0.0, 0.0, 0.0, 0.0, -jnp.inf])
    plain = jl.cross_entropy(x @ w + bias, y, label_smoothing=0.1, reduction="sum")
    assert np.isfinite(plain)
    for passes in (1, 2):
        fused = jl.linear_cross_entropy(
            x, w, y, bias=bias, label_smoothing=0.1, reduction="sum", passes=passes
        )
        assert fused == np.inf
        padded = jl.linear_cross_entropy(
            x, w, y, label_smoothing=0.1, reduction="sum", passes=passes, vocab_size=4
        )
        _close(padded, plain, 1e-6)


@claim(
    "docs/large-vocab.md",
    "Three things of `cross_entropy`'s",
    "are not here: `where=` (a mask over the classes), `axis` (the vocabulary is always",
)
def linear_options():
    import inspect

    linear = set(inspect.signature(jl.linear_cross_entropy).parameters)
    plain = set(inspect.signature(jl.cross_entropy).parameters)
    assert plain - linear == {"logits", "where", "axis"}
    assert linear - plain == {
        "x",
        "w",
        "bias",
        "chunk_size",
        "passes",
        "vocab_chunk_size",
        "return_aux",
    }
    with pytest.raises(TypeError, match="targets must be integer token ids"):
        jl.linear_cross_entropy(jnp.ones((2, 3)), jnp.ones((3, 4)), jnp.ones((2, 4)))


@claim(
    "docs/large-vocab.md",
    "A token of weight 0 adds nothing, not even from non-finite logits.",
    "The weights are constants: no gradient flows to them",
)
def token_weight_zero_and_constant():
    x, w, _, y = build.linear_problem(n=12, v=16)
    t = jnp.linspace(0.0, 2.0, 12)  # t[0] = 0
    bad = x.at[0].set(jnp.nan)
    value, grads = jax.value_and_grad(jl.linear_cross_entropy, (0, 1))(bad, w, y, token_weight=t)
    _close(value, jl.linear_cross_entropy(x, w, y, token_weight=t))
    assert all(np.all(np.isfinite(g)) for g in grads) and not np.any(grads[0][0])
    logits = x @ w
    for loss in (
        lambda t: jl.linear_cross_entropy(x, w, y, token_weight=t),
        lambda t: jl.cross_entropy(logits, y, token_weight=t),
        lambda t: jl.nll_loss(jl.log_softmax(logits), y, token_weight=t),
    ):
        assert not np.any(jax.grad(loss)(t))


@claim(
    "docs/large-vocab.md",
    "(a sequence with no kept token contributes nothing and is not counted).",
    "Without `segment_ids` each row (the targets' last axis) is one sequence.",
    "and id 0 marks padding, which is ignored in every reduction.",
)
def sequence_mean_counting():
    logits = build.logits((2, 4, 5))
    y = jnp.array([[1, 2, 3, 4], [-100, -100, 0, 1]])
    per = jl.cross_entropy(logits, y, reduction="none")
    # Row 1: sequence 3 has only ignored tokens; sequence 0 is padding.
    segments = jnp.array([[1, 1, 2, 2], [3, 3, 0, 0]])
    want = (per[0, :2].mean() + per[0, 2:].mean()) / 2
    _close(jl.cross_entropy(logits, y, segment_ids=segments, reduction="sequence_mean"), want)
    rows = (per[0].mean() + per[1, 2:].mean()) / 2
    _close(jl.cross_entropy(logits, y, reduction="sequence_mean"), rows)
    for reduction in ("mean", "sum", "none"):
        got = jl.cross_entropy(logits, y, segment_ids=segments, reduction=reduction)
        _close(
            got, jl.cross_entropy(logits, jnp.where(segments == 0, -100, y), reduction=reduction)
        )


@claim(
    "docs/large-vocab.md",
    "row's ids and no matmul.",
    "token weights, packed sequences, a normalizer and the logging statistics add no",
    "matmul and no chunk-sized buffer to the plain mean; a dense teacher adds its own",
    "logits' matmul per chunk.",
)
def token_option_costs():
    n, h, v = 1024, 32, 4096
    cases = lm_suite.lm_cases(n, v)
    args = [
        jax.ShapeDtypeStruct(s, d)
        for s, d in [
            ((8, n // 8, h), jnp.float32),
            ((h, v), jnp.float32),
            ((8, n // 8), jnp.int32),
            ((8, n // 8, h), jnp.float32),
            ((h, v), jnp.float32),
        ]
    ]
    steps = {k: jax.value_and_grad(f, argnums=(0, 1)) for k, f in cases.items()}
    matmuls = {k: measure.count_matmuls(f, *args) for k, f in steps.items()}
    temps = {k: measure.compiled_temp_bytes(f, *args) for k, f in steps.items()}
    chunk_bytes = auto_chunk_size(n, v) * v * 4
    for k in ("token_weight", "sequence_mean", "normalizer", "return_aux"):
        assert matmuls[k] == matmuls["mean"] == 3, k
        assert temps[k] < temps["mean"] + chunk_bytes, (k, temps)
    assert matmuls["kl_dense"] == 4


# --- docs/pytorch.md and docs/optax.md: the translation tables --------------------------


@claim(
    "docs/pytorch.md",
    "| `F.cross_entropy(x, y, weight=w, ignore_index=i, reduction=r, label_smoothing=e)` "
    "| `jl.cross_entropy(x, y, weight=w, ignore_index=i, reduction=r, label_smoothing=e)` |",
    "| `F.cross_entropy(x, y)` with `x: (N, C, d1, ..., dK)` | `jl.cross_entropy(x, y, axis=1)`",
    "| `F.binary_cross_entropy_with_logits(x, t, weight=w, pos_weight=pw)` "
    "| `jl.binary_cross_entropy_with_logits(x, t, weight=w, pos_weight=pw)` |",
    '| `F.kl_div(logq, t, reduction="batchmean", log_target=b)` '
    '| `jl.kl_div(logq, t, reduction="batchmean", log_target=b)` |',
)
def pytorch_translation_table():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 5)).astype(np.float32)
    y = np.array([0, 4, -100, 2, 1, 7 % 5])
    w = rng.uniform(0.5, 2, size=5).astype(np.float32)
    t = rng.dirichlet(np.ones(5), size=6).astype(np.float32)
    T = torch.tensor  # noqa: N806

    def same(ours, theirs):
        np.testing.assert_allclose(np.asarray(ours), theirs.detach().numpy(), rtol=2e-5, atol=2e-6)

    same(jl.log_softmax(x, axis=1), F.log_softmax(T(x), dim=1))
    same(jl.softmax(x, axis=0), F.softmax(T(x), dim=0))
    same(jl.log_sigmoid(x), F.logsigmoid(T(x)))
    for r in ("mean", "sum", "none"):
        same(
            jl.cross_entropy(x, y, weight=w, ignore_index=-100, reduction=r, label_smoothing=0.1),
            F.cross_entropy(
                T(x), T(y), weight=T(w), ignore_index=-100, reduction=r, label_smoothing=0.1
            ),
        )
        same(jl.cross_entropy(x, t, reduction=r), F.cross_entropy(T(x), T(t), reduction=r))
        logp = jl.log_softmax(x)
        same(
            jl.nll_loss(logp, y, weight=w, reduction=r),
            F.nll_loss(T(np.asarray(logp)), T(y), weight=T(w), reduction=r),
        )
        p = 1 / (1 + np.exp(-x))
        same(
            jl.binary_cross_entropy(p, t, weight=w, reduction=r),
            F.binary_cross_entropy(T(p), T(t), weight=T(w), reduction=r),
        )
        same(
            jl.binary_cross_entropy_with_logits(x, t, weight=w, pos_weight=w, reduction=r),
            F.binary_cross_entropy_with_logits(
                T(x), T(t), weight=T(w), pos_weight=T(w), reduction=r
            ),
        )
    kd = rng.normal(size=(2, 5, 3, 4)).astype(np.float32)
    ky = rng.integers(0, 5, size=(2, 3, 4))
    same(jl.cross_entropy(kd, ky, axis=1), F.cross_entropy(T(kd), T(ky)))
    for b in (False, True):
        target = np.log(t) if b else t
        same(
            jl.kl_div(jl.log_softmax(x), target, reduction="batchmean", log_target=b),
            F.kl_div(F.log_softmax(T(x), -1), T(target), reduction="batchmean", log_target=b),
        )


@claim(
    "docs/benchmarks.md",
    "jaxloss gathers each extended label's log-probability once (B × T × (2L + 1) numbers) "
    "and its gradient is a scatter-add of the state occupancies into the log-softmax's "
    "gradient; optax forms the label log-probabilities as an einsum with a one-hot of the "
    "labels (B × T × C × L multiply-adds, and as many again in the gradient)",
)
def ctc_programs():
    pytest.importorskip("optax")
    inputs = ctc_suite.ctc_inputs(2, 12, 7, 3, jnp.float32)
    matmuls = {}
    for name, fn in ctc_suite.ctc_cases().items():
        step = jax.value_and_grad(fn)
        matmuls[name] = measure.count_matmuls(step, *inputs)
        if name != "optax.ctc_loss":
            assert "stablehlo.scatter" in jax.jit(step).lower(*inputs).as_text()
    # optax: the einsum, and more in its autodiff gradient; jaxloss: none.
    assert matmuls.pop("optax.ctc_loss") >= 2
    assert matmuls == {"ctc_loss_with_paddings": 0, "ctc_loss (T, B, C)": 0}


@claim(
    "docs/pytorch.md",
    "| `F.multi_margin_loss(x, y, p=p, margin=m, weight=w)` "
    "| `jl.multi_margin_loss(x, y, p=p, margin=m, weight=w)` |",
    "| `F.multilabel_margin_loss(x, y)` | `jl.multilabel_margin_loss(x, y)` |",
    "| `F.multilabel_soft_margin_loss(x, t, weight=w)` "
    "| `jl.multilabel_soft_margin_loss(x, t, weight=w)` |",
    "| `F.soft_margin_loss(x, t)` | `jl.soft_margin_loss(x, t)` |",
    "| `F.hinge_embedding_loss(x, t, margin=m)` | `jl.hinge_embedding_loss(x, t, margin=m)` |",
)
def pytorch_margin_rows():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(4, 5)), rng.integers(0, 5, size=4)
    w, t = rng.uniform(0.5, 2.0, size=5), rng.uniform(size=(4, 5)).round()
    lists = np.array([[1, 3, -1, 0, 0], [0, -1, 0, 0, 0], [4, 2, 1, 0, 3], [-1, 0, 0, 0, 0]])
    T = torch.tensor  # noqa: N806
    pairs = [
        (jl.multi_margin_loss(x, y, p=2, margin=0.7, weight=w),
         F.multi_margin_loss(T(x), T(y), p=2, margin=0.7, weight=T(w))),
        (jl.multilabel_margin_loss(x, lists), F.multilabel_margin_loss(T(x), T(lists))),
        (jl.multilabel_soft_margin_loss(x, t, weight=w),
         F.multilabel_soft_margin_loss(T(x), T(t), weight=T(w))),
        (jl.soft_margin_loss(x, 2 * t - 1), F.soft_margin_loss(T(x), T(2 * t - 1))),
        (jl.hinge_embedding_loss(x, 2 * t - 1, margin=0.8),
         F.hinge_embedding_loss(T(x), T(2 * t - 1), margin=0.8)),
    ]  # fmt: skip
    for ours, theirs in pairs:
        _close(ours, theirs.numpy())


@claim(
    "docs/optax.md",
    "| `optax.losses.hinge_loss(scores, targets)` "
    '| `jl.hinge_loss(scores, targets, reduction="none")` |',
    "| `optax.losses.multiclass_perceptron_loss(scores, labels)` "
    '| `jl.multiclass_perceptron_loss(scores, labels, reduction="none")` |',
)
def optax_margin_rows():
    optax = pytest.importorskip("optax")
    rng = np.random.default_rng(8)
    x, y, t = rng.normal(size=(5, 4)), rng.integers(0, 4, size=5), rng.choice([-1.0, 1.0], (5, 4))
    cases = [("hinge_loss", t), ("perceptron_loss", t)]
    cases += [("multiclass_hinge_loss", y), ("multiclass_perceptron_loss", y)]
    for name, target in cases:
        ours = getattr(jl, name)(x, target, reduction="none")
        _close(ours, getattr(optax.losses, name)(x, target))


@claim(
    "docs/optax.md",
    "| `optax.losses.ntxent(embeddings, labels, temperature)` "
    "| `jl.ntxent_loss(embeddings, labels, temperature)` (0, not nan, for a batch without a "
    "positive pair) |",
)
def optax_ntxent_row():
    optax = pytest.importorskip("optax")
    rng = np.random.default_rng(12)
    e, labels = rng.normal(size=(9, 4)).astype(np.float32), rng.integers(0, 3, size=9)
    _close(jl.ntxent_loss(e, labels, 0.2), optax.losses.ntxent(e, labels, 0.2), tol=1e-5)
    alone = np.arange(9)
    assert np.isnan(optax.losses.ntxent(e, alone)) and jl.ntxent_loss(e, alone) == 0


@claim(
    "docs/optax.md",
    "| `optax.projections.projection_simplex(x)` for each row | `jl.sparsemax(x)` |",
    "| `optax.losses.sparsemax_loss(logits, labels)` "
    '| `jl.sparsemax_loss(logits, labels, reduction="none")` |',
    "| `optax.losses.multiclass_sparsemax_loss(scores, labels)` "
    '| `jl.multiclass_sparsemax_loss(scores, labels, reduction="none")` |',
)
def optax_sparsemax_rows():
    optax = pytest.importorskip("optax")
    rng = np.random.default_rng(10)
    x, y, b = rng.normal(size=(5, 4)), rng.integers(0, 4, size=5), rng.integers(0, 2, (5, 4))
    _close(jl.sparsemax(x), jax.vmap(optax.projections.projection_simplex)(jnp.asarray(x)))
    _close(jl.sparsemax_loss(x, b, reduction="none"), optax.losses.sparsemax_loss(x, b))
    ours = jl.multiclass_sparsemax_loss(x, y, reduction="none")
    _close(ours, optax.losses.multiclass_sparsemax_loss(x, y))


@claim(
    "docs/optax.md",
    "| `optax.losses.dice_loss(logits, one_hot, alpha=a, beta=b, class_weights=w)` | "
    '`jl.tversky_loss(logits, one_hot, alpha=a, beta=b, weight=w, reduction="none").mean(-1)` |',
    "| `optax.losses.multiclass_generalized_dice_loss(logits, one_hot)` "
    "| `jl.generalized_dice_loss(logits, one_hot)` |",
    "| `optax.losses.binary_dice_loss(logits, targets)` "
    '| `jl.dice_loss(logits, targets, axis=None, reduction="none")` |',
)
def optax_dice_rows():
    optax = pytest.importorskip("optax")
    rng = np.random.default_rng(12)
    logits = rng.normal(size=(2, 5, 3))
    one_hot = np.eye(3)[rng.integers(0, 3, size=(2, 5))]
    w = np.array([0.5, 1.0, 2.0])
    ours = jl.tversky_loss(logits, one_hot, alpha=0.2, beta=0.8, weight=w, reduction="none")
    theirs = optax.losses.dice_loss(logits, one_hot, alpha=0.2, beta=0.8, class_weights=w)
    _close(ours.mean(-1), theirs)
    ours = jl.generalized_dice_loss(logits, one_hot)
    _close(ours, optax.losses.multiclass_generalized_dice_loss(logits, one_hot))
    ours = jl.dice_loss(logits[..., 0], one_hot[..., 0], axis=None, reduction="none")
    _close(ours, optax.losses.binary_dice_loss(logits[..., 0], one_hot[..., 0]))


@claim(
    "docs/optax.md",
    "| `optax.ctc_loss(logits, logit_paddings, labels, label_paddings, blank_id=k)` "
    "| `jl.ctc_loss_with_paddings(logits, logit_paddings, labels, label_paddings, blank=k)` |",
)
def optax_ctc_row():
    optax = pytest.importorskip("optax")
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(3, 9, 5))
    paddings = (np.arange(9) >= np.array([[9], [7], [8]])).astype(float)
    labels, label_paddings = np.array([[1, 3], [4, 4], [0, 1]]), np.zeros((3, 2))
    ours = jl.ctc_loss_with_paddings(logits, paddings, labels, label_paddings, blank=2)
    _close(ours, optax.ctc_loss(logits, paddings, labels, label_paddings, blank_id=2), 1e-9)


@claim(
    "docs/pytorch.md",
    "| `F.ctc_loss(log_probs, targets, input_lengths, target_lengths, blank=b, reduction=r, "
    "zero_infinity=z)` with padded `(B, S)` targets | `jl.ctc_loss(log_probs, targets, "
    "input_lengths, target_lengths, blank=b, reduction=r, zero_infinity=z)` |",
)
def pytorch_ctc_row():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    log_probs = np.asarray(jax.nn.log_softmax(rng.normal(size=(8, 3, 5))))
    labels, lengths, label_lengths = (
        np.array([[1, 1, 3], [0, 4, 4], [3, 3, 3]]),
        [8, 6, 4],
        [3, 2, 3],
    )
    for r, z in [("mean", False), ("sum", True), ("none", True)]:
        ours = jl.ctc_loss(log_probs, labels, lengths, label_lengths, blank=2, reduction=r,
                           zero_infinity=z)  # fmt: skip
        theirs = torch.nn.functional.ctc_loss(
            torch.tensor(log_probs), torch.tensor(labels), torch.tensor(lengths),
            torch.tensor(label_lengths), blank=2, reduction=r, zero_infinity=z,
        )  # fmt: skip
        _close(ours, theirs.numpy())


@claim(
    "docs/optax.md",
    "| `optax.softmax_cross_entropy_with_integer_labels(logits, labels)` "
    '| `jl.cross_entropy(logits, labels, reduction="none")` |',
    "| `optax.smooth_labels(onehot, alpha)` then `softmax_cross_entropy` "
    '| `jl.cross_entropy(logits, labels, label_smoothing=alpha, reduction="none")` |',
    "| `optax.kl_divergence(log_predictions, targets)` |",
    '`jl.kl_div(log_predictions, targets, reduction="none").sum(-1)` |',
)
def optax_translation_table():
    optax = pytest.importorskip("optax")
    x = build.normal((8, 10), 0)
    labels = build.integers((8,), 1, 0, 10)
    probs = jax.nn.softmax(build.normal((8, 10), 2))
    binary = (probs > 0.1).astype(jnp.float32)
    log_q = jax.nn.log_softmax(x)
    pairs = [
        (
            optax.softmax_cross_entropy_with_integer_labels(x, labels),
            jl.cross_entropy(x, labels, reduction="none"),
        ),
        (optax.softmax_cross_entropy(x, probs), jl.cross_entropy(x, probs, reduction="none")),
        (
            optax.sigmoid_binary_cross_entropy(x, binary),
            jl.binary_cross_entropy_with_logits(x, binary, reduction="none"),
        ),
        (optax.kl_divergence(log_q, probs), jl.kl_div(log_q, probs, reduction="none").sum(-1)),
        (
            optax.softmax_cross_entropy(x, optax.smooth_labels(jax.nn.one_hot(labels, 10), 0.1)),
            jl.cross_entropy(x, labels, label_smoothing=0.1, reduction="none"),
        ),
    ]
    for theirs, ours in pairs:
        assert ours.shape == theirs.shape
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


# --- README.md -------------------------------------------------------------------------


LAYERS = {
    "_checks": 0,
    "_reduce": 0,
    "_targets": 0,
    "_softmax": 1,
    "_xent": 2,
    "_classification": 3,
    "_fused": 3,
    "_linear": 4,
    "_binary": 3,
    "_divergence": 3,
    "_ctc": 3,
    "_overlap": 3,
    "_sparsemax": 3,
    "_margin": 4,
    "_distill": 4,
    "_logprobs": 4,
    "_focal": 4,
    "_contrastive": 4,
}


@claim(
    "docs/architecture.md",
    "Imports run one way: `_checks`, `_reduce` and `_targets` at the bottom, then `_softmax`, then",
    "`_xent`, then the fused engine (`_fused/`) and the public loss modules, which import",
    "nothing from each other, except `_linear`, `_distill`, `_logprobs` and `_contrastive`,",
    "the engine's heads, and `_focal` and `_margin`, which build on `_binary`'s terms; those",
    "six sit above the rest.",
)
def import_layers():
    for name, layer in LAYERS.items():
        package = ROOT / "jaxloss" / name
        files = sorted(package.glob("*.py")) if package.is_dir() else [package.with_suffix(".py")]
        imported = set()
        for node in (n for f in files for n in ast.walk(ast.parse(f.read_text()))):
            if isinstance(node, ast.ImportFrom) and node.module == "jaxloss":
                imported |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jaxloss."):
                imported.add(node.module.split(".")[1])
        for other in imported - {name}:
            assert LAYERS[other] < layer or {name, other} <= {"_checks", "_reduce"}, (
                name,
                other,
            )
    modules = {p.stem for p in (ROOT / "jaxloss").glob("_*.py")} - {"__init__"}
    assert set(LAYERS) == modules | {"_fused"}


@claim("README.md", "The core depends on `jax` alone (0.8.0 or newer;")
def core_dependencies():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["dependencies"] == ["jax>=0.8.0"]
    allowed = {
        "jax",
        "numpy",
        "jaxloss",
        "__future__",
        "dataclasses",
        "functools",
        "math",
        "numbers",
        "typing",
    }
    for path in (ROOT / "jaxloss").glob("_*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in allowed, (path.name, name)


@claim(
    "README.md",
    "class indices of any integer dtype give the same result",
    "as `int32` (a `uint8` mask with 300 classes, `ignore_index=-100` with unsigned",
)
def readme_dtypes():
    x = build.normal((4, 300), 0)
    values = [0, 156, 255, 7]
    want = jl.cross_entropy(x, jnp.array(values, jnp.int32), reduction="none")
    got = jl.cross_entropy(x, np.array(values, np.uint8), reduction="none")
    np.testing.assert_array_equal(got, want)
    assert np.all(np.asarray(got) > 0)  # 156 is a class, not -100 wrapped around


# --- measured figures ------------------------------------------------------------------

MEASUREMENTS = DOCS / "measurements"
MEASURED_PAGES = {
    "docs/benchmarks.md": [
        "cpu-losses.json",
        "cpu-matmuls.json",
        "cpu-matmuls-before.json",
        "cpu-memory.json",
        "cpu-ctc.json",
        "cpu-contrastive-benchmark.json",
    ],
    "docs/large-vocab.md": ["cpu-linear.json", "cpu-lm.json"],
}
FIGURE = re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?\s?(?:ms|MiB|GiB|GB/s|MB|s\b|×)")


def _measured_section(text: str) -> str:
    """The page from its first "## ... measured" / "## CPU" heading to the next "## "."""
    match = re.search(r"^## (?:Measured|CPU).*?$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, "no measured section"
    return match.group(1)


@pytest.mark.parametrize("page", list(MEASURED_PAGES))
def test_measured_tables_are_rendered_from_the_raw_data(page):
    text = _page(page)
    for name in MEASURED_PAGES[page]:
        result = json.loads((MEASUREMENTS / name).read_text())
        for part in report(result).split("\n\n"):
            assert part in text, f"{page} does not quote {name} as rendered:\n{part}"


@pytest.mark.parametrize("page", list(MEASURED_PAGES))
def test_measured_sections_quote_no_figure_the_raw_data_lacks(page):
    section = _measured_section(_page(page))
    rendered = "\n".join(
        report(json.loads((MEASUREMENTS / name).read_text())) for name in MEASURED_PAGES[page]
    )
    prose = section.replace(rendered, "")
    for table in rendered.split("\n\n"):
        prose = prose.replace(table, "")
    stray = [f for f in FIGURE.findall(prose) if f not in rendered]
    assert stray == [], stray


def test_figure_pattern_finds_figures():
    assert FIGURE.findall("took 181 ms, 1.53× the copy, 82.5 MiB and 5.9 GB/s") == [
        "181 ms",
        "1.53×",
        "82.5 MiB",
        "5.9 GB/s",
    ]


# --- the registry ---------------------------------------------------------------------


def test_every_quoted_passage_is_in_its_page():
    for page, passages, check in CLAIMS:
        text = _normalized(_page(page))
        for passage in passages:
            assert _normalized(passage) in text, (check.__name__, page, passage)


@pytest.mark.exhaustive(quick_cases=2)
@pytest.mark.parametrize("check", [c for _, _, c in CLAIMS], ids=lambda c: c.__name__)
def test_claim_holds(x64, check):
    check()


def test_every_doc_page_with_claims_exists():
    assert {page for page, _, _ in CLAIMS} <= {
        str(p.relative_to(ROOT)) for p in [ROOT / "README.md", *DOCS.glob("*.md")]
    }
    assert len(CLAIMS) >= 20


def _benchmark_commands():
    for page in ("README.md", "docs/benchmarks.md", "docs/large-vocab.md", "docs/backends.md"):
        for block in re.findall(r"```bash\n(.*?)```", _page(page), re.S):
            for line in block.splitlines():
                if "python -m benchmarks" in line:
                    yield page, line.split("#")[0].split("python -m benchmarks", 1)[1].split()


def test_every_documented_benchmark_command_times_the_shapes_it_names():
    """A documented command that names linear shapes measures them: none is above its
    --max-linear-tflop (the default run's own shapes say in the table when they are not
    timed, and why)."""
    named = 0
    for page, argv in _benchmark_commands():
        options = dict(zip(argv, argv[1:], strict=False))
        if "--shapes" not in options:
            continue
        named += 1
        limit = float(options.get("--max-linear-tflop", 2.0)) * 1e12
        for n, h, v in cli.parse_shapes(options["--shapes"], 3):
            assert 6 * n * h * v <= limit, (page, " ".join(argv), (n, h, v))
    assert named >= 1


def test_the_lm_head_example_figures_are_the_raw_data():
    """docs/sharding.md quotes the example's runs as saved in docs/measurements."""
    page = _page("docs/sharding.md")
    labels = {
        "1x1": "1 process, 1 device",
        "1x8": "1 process, 8 devices",
        "2x4": "2 processes × 4 devices",
    }
    for key, label in labels.items():
        run = json.loads((MEASUREMENTS / f"cpu-lm-head-{key}.json").read_text())
        memory = run["memory_per_device"]
        row = (
            f"| {label} | {run['mesh']['data']} × {run['mesh']['vocab']} "
            f"| {run['loss_curve'][0][1]:.4f} | {run['loss_curve'][-1][1]:.4f} "
            f"| {run['tokens_per_second']:,.0f} | {memory['temp_bytes'] / 2**20:.2f} MiB "
            f"| {memory['argument_bytes'] / 2**20:.2f} MiB |"
        )
        assert row in page, row
        assert run["processes"] == (2 if key == "2x4" else 1) and run["devices"] == int(
            key[0]
        ) * int(key[-1])
        assert f"Measured {run['date']} on a 2-core x86_64 VM, jax {run['jax']}" in page


COMMUNICATION_ROWS = (  # layout, loss, the mode the row shows, label
    ("data", "linear_cross_entropy", "auto_mesh", 'tokens over `"data"`, `w` replicated'),
    (
        "fsdp",
        "linear_cross_entropy",
        "auto_mesh",
        'tokens over `"data"`, `w` FSDP (`P("data", None)`)',
    ),
    ("fsdp", "linear_cross_entropy", "auto", "the same with no mesh set"),
    (
        "vocab_on_data",
        "linear_cross_entropy",
        "auto_mesh",
        'tokens and `w`\'s vocabulary both over `"data"`',
    ),
    (
        "vocab_on_data",
        "linear_cross_entropy_w_replicated",
        "auto_mesh",
        "the same, `w` replicated by the caller first",
    ),
    (
        "data+vocab",
        "linear_cross_entropy",
        "auto_mesh",
        '2 × 4 (`"data"`, `"vocab"`), `w` as `P(None, "vocab")`',
    ),
    (
        "vocab",
        "linear_cross_entropy",
        "auto_mesh",
        "tokens replicated, `w`'s vocabulary over 8 devices",
    ),
)
COMMUNICATION_COLUMNS = (
    "linear_cross_entropy_one_pass",
    "linear_cross_entropy_none",
    "linear_kl_div",
    "linear_kl_div_topk",
    "linear_jsd",
    "linear_log_probs",
)


def communication_table(cells) -> str:
    """docs/sharding.md's table of the fused losses' collectives relative to the unfused
    loss, from the saved cells: bfloat16 / float32, in the mode each row names."""
    ratios = {
        (c["mode"], c["layout"], c["loss"], c["dtype"]): c["fused"] / c["unfused"]
        for c in cells
        if not isinstance(c["fused"], str) and not isinstance(c["unfused"], str)
    }

    def cell(*key):
        if (*key, "float32") not in ratios:
            return "—"
        shown = [ratios[(*key, d)] for d in ("bfloat16", "float32")]
        return " / ".join(f"{r:.2f}×" if r < 10 else f"{r:.0f}×" for r in shown)

    lines = [
        '| layout (`x`, `w`) | `linear_cross_entropy` | one pass | `"none"` '
        "| `linear_kl_div`, dense | top-2 teacher | `linear_jsd` | `linear_log_probs` |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for layout, loss, mode, label in COMMUNICATION_ROWS:
        plain = loss == "linear_cross_entropy"
        others = [cell(mode, layout, c) if plain else "—" for c in COMMUNICATION_COLUMNS]
        lines.append(f"| {label} | {cell(mode, layout, loss)} | {' | '.join(others)} |")
    return "\n".join(lines)


def test_the_communication_table_is_the_saved_run():
    """docs/sharding.md's communication table is the run saved in docs/measurements;
    explicit sharding and automatic sharding under a mesh agree in every cell (explicit
    sharding refuses the same-axis layout, as x @ w does, and picks a top-k teacher's
    logits by (row, id) pairs), and so does automatic sharding with no mesh set."""
    saved = json.loads((MEASUREMENTS / "cpu-communication.json").read_text())
    cells = saved["cells"]
    page = _page("docs/sharding.md")
    assert communication_table(cells) in page, communication_table(cells)
    env = saved["environment"]
    assert f"measured {env['date']} on a 2-core x86_64 VM, jax {env['jax']}" in page
    by_mode: dict = {}
    for c in cells:
        if isinstance(c["fused"], str) or isinstance(c["unfused"], str):
            assert c["mode"] == "explicit" and c["layout"] == "vocab_on_data", c
            continue
        key = (c["layout"], c["dtype"], c["loss"])
        by_mode.setdefault(key, {})[c["mode"]] = c["fused"] / c["unfused"]
    assert len(by_mode) == 2 * (5 * 8 + 1)
    for key, modes in by_mode.items():
        if key[2] == "linear_kl_div_topk" and "explicit" in modes:
            assert 0 <= modes.pop("explicit") - modes["auto_mesh"] < 0.015, (key, modes)
        assert max(modes.values()) - min(modes.values()) < 0.005, (key, modes)
