"""``linear_log_probs``: each token's target log-probability and the entropy of its
next-token distribution, without the N x V logits, for any cotangent.

The head of the per-token path of the fused engine (``jaxloss._fused.per_token``):
from one chunk of raw logits it forms both values and their logit gradients; for the
vocabulary scan of the JVP rule, any columns of those gradients from the row's
log-partition and entropy.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxloss import _checks
from jaxloss._fused import driver, engine, per_token
from jaxloss._fused.chunking import VocabChunk
from jaxloss._reduce import like_tokens, poison
from jaxloss._softmax import max_and_sum_exp
from jaxloss._targets import IGNORED, OUT_OF_RANGE
from jaxloss._xent import Fill


def _entropy_grad(p, log_p, entropy, inv_t):
    """``dH/dz = -p (log p + H) / T``, 0 where ``p`` is 0 (a nan ``p`` stays nan)."""
    return -jnp.where(p == 0, 0.0, p * jnp.where(p == 0, 0.0, log_p + entropy)) * inv_t


@dataclasses.dataclass(frozen=True)
class LogProbHead:
    """``(log p_y, H(p))`` with ``p = softmax(z / T)`` (``per_token.TokenHead``). Tokens:
    the resolved target codes; params: ``1 / T``. Saved: the log-partition of ``z / T``
    and the entropy."""

    vocab: int  # the classes in use: w's columns past them are padding
    padded: int  # w's columns

    @property
    def outputs(self) -> int:
        return 2

    @property
    def saved_width(self) -> int:
        return 2

    def counted(self, codes, inv_t):
        return codes != IGNORED

    def _scaled(self, z, ids, inv_t):
        if self.vocab < self.padded:
            z = engine.mask_padding(z, ids, self.vocab)
        # 1 / T's tangent is a symbolic zero here, not a zero that times -inf is nan.
        return z * jax.lax.stop_gradient(inv_t)

    def _rows(self, z, codes, inv_t):
        """Per token: the values ``[c, 2]``, ``log p`` ``[c, V]`` and the log-partition."""
        s = self._scaled(z, jnp.arange(self.padded, dtype=jnp.int32), inv_t)
        m, total = max_and_sum_exp(s, -1)
        log_total = jnp.log(total)
        shifted = s - m
        log_p = shifted - log_total
        p = jnp.exp(log_p)
        onehot = codes[:, None] == jnp.arange(self.padded, dtype=jnp.int32)
        target = jnp.sum(jnp.where(onehot, log_p, 0.0), axis=-1)
        # -sum_v p_v log p_v = log S - sum_v p_v (s_v - m); a class of probability 0 adds 0.
        mass = jnp.where(p == 0, 0.0, p * jnp.where(p == 0, 0.0, shifted))
        entropy = log_total[:, 0] - jnp.sum(mass, axis=-1)
        # A target outside the vocabulary names no column: its row of x is nan already.
        target = jnp.where(codes == OUT_OF_RANGE, jnp.nan, target)
        keep = self.counted(codes, inv_t)[:, None]
        values = jnp.where(keep, jnp.stack([target, entropy], axis=-1), 0.0)
        return values, log_p, (m + log_total)[:, 0], onehot

    def values(self, z, codes, inv_t):
        return self._rows(z, codes, inv_t)[0]

    def values_and_grads(self, z, codes, inv_t, fill: Fill):
        values, log_p, lse, onehot = self._rows(z, codes, inv_t)
        p = jnp.exp(log_p)
        keep = self.counted(codes, inv_t)[:, None]
        entropy = values[:, 1:]
        parts = [(onehot - p) * inv_t, _entropy_grad(p, log_p, entropy, inv_t)]
        grads = jnp.stack([jnp.where(keep, g, 0.0) for g in parts])
        return values, grads, jnp.stack([lse, values[:, 1]], axis=-1)

    def vocab_chunk_grads(self, z_t, codes, saved, inv_t, chunk: VocabChunk, fill: Fill):
        ids = chunk.ids()[:, None]
        log_p = self._scaled(z_t, ids, inv_t) - saved[None, :, 0]
        p = jnp.exp(log_p)
        keep = self.counted(codes, inv_t)[None, :]
        grads = [(ids == codes[None, :]) - p, _entropy_grad(p, log_p, saved[None, :, 1], 1.0)]
        return jnp.stack([jnp.where(keep, g * inv_t, 0.0) for g in grads])


@functools.partial(jax.jit, static_argnums=(4,))
def _linear_log_probs(x, w, bias, codes, plan: driver.Plan, temperature):
    acc = engine.accumulation_dtype(x, w)
    inv_t = jax.lax.stop_gradient(1.0 / jnp.asarray(temperature, acc))
    codes = like_tokens(codes, x)
    shape, codes = codes.shape, codes.reshape(-1)
    x2 = poison(x.reshape(-1, w.shape[0]), codes == OUT_OF_RANGE)  # nan value and gradient
    head = LogProbHead(plan.vocab_size, w.shape[1])
    values = per_token.per_token_values(head, plan.config, x2, w, bias, codes, inv_t)
    dtype = jnp.promote_types(x.dtype, w.dtype)
    return tuple(values[:, k].reshape(shape).astype(dtype) for k in range(2))


def linear_log_probs(
    x: ArrayLike,
    w: ArrayLike,
    targets: ArrayLike,
    *,
    bias: ArrayLike | None = None,
    temperature: ArrayLike = 1.0,
    ignore_index: int = -100,
    chunk_size: int | None = None,
    vocab_chunk_size: int | None = None,
    vocab_size: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    r"""Per-token log-probabilities of the targets and entropies of a language-model
    head, fused: what a policy-gradient loss (PPO, GRPO) needs, without the logits.

    With the logits $z_n = x_n W + b$, the temperature $T$ and
    $p_n = \operatorname{softmax}(z_n / T)$, token $n$ with target $y_n$ gives

    $$
    \log p_{n, y_n} = z_{n, y_n} / T - \log \sum_v e^{z_{n,v} / T},
    \qquad H_n = -\sum_v p_{n,v} \log p_{n,v}.
    $$

    Gradient (the custom JVP rule): for any cotangents $a_n$ on the log-probabilities
    and $e_n$ on the entropies, with

    $$
    G_n = \frac{1}{T}\Big(a_n (\mathbb{1}_{y_n} - p_n)
          - e_n\, p_n \odot (\log p_n + H_n)\Big),
    \qquad
    \frac{\partial L}{\partial x_n} = G_n W^\top, \quad
    \frac{\partial L}{\partial W} = \sum_n x_n^\top G_n, \quad
    \frac{\partial L}{\partial b} = \sum_n G_n.
    $$

    The values and the per-token rows $(\mathbb{1}_{y_n} - p_n) W^\top$ and
    $p_n \odot (\log p_n + H_n) W^\top$ are formed in one pass over chunks of
    ``chunk_size`` tokens. The weight gradient, whose cotangents only reverse mode
    knows, is formed in a scan over the vocabulary in chunks, each recomputing its
    columns of the logits for all the tokens (with the tokens split over devices,
    each block of $\partial L / \partial W$ is then reduced over them once). That
    is five matmuls for the value and the gradients where the logits written out
    take three, and neither direction holds more than a chunk of logits.
    Forward mode, ``vmap`` and higher derivatives work as for any JAX function.

    Args:
        x: floating hidden states ``[..., H]``.
        w: the projection ``[H, V]`` (PyTorch's ``[V, H]`` embedding matrix
            transposed).
        targets: integer token ids of shape ``x.shape[:-1]``. A token whose target is
            ``ignore_index`` gives 0 for both values with zero gradient; one outside
            ``[0, vocab_size)`` gives nan for both (and a nan gradient).
        bias: optional logit bias ``[V]``; ``-inf`` entries give their columns
            probability 0.
        temperature: $T > 0$ (may be traced; no gradient).
        ignore_index: see ``targets`` (static).
        chunk_size: tokens per chunk (static); by default as in
            [`linear_cross_entropy`][jaxloss.linear_cross_entropy].
        vocab_chunk_size: vocabulary columns per step of the gradient's scan when
            the tokens may be split over devices (static); on one device the scan
            takes as many multiples of 128 columns as keep its logits within 16 MiB.
        vocab_size: the number of vocabulary entries in use (static), for ``w``
            padded past them: those columns get probability 0 and zero gradient.

    Returns:
        ``(log_probs, entropy)``, each of shape ``x.shape[:-1]`` in the promoted dtype
        of ``x`` and ``w`` (16-bit inputs are accumulated in float32).

    PyTorch has no fused counterpart; written out it is
    ``logits.div(T).log_softmax(-1).gather(-1, y[..., None])`` and
    ``torch.distributions.Categorical(logits=logits / T).entropy()``. verl's
    ``FusedLinearForPPO`` and Liger-Kernel's fused linear functions return the same
    pair on GPUs.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import jaxloss as jl
        >>> jnp.set_printoptions(precision=4)
        >>> x = jnp.array([[1.0, 0.5], [-0.5, 2.0], [0.3, 0.3]])
        >>> w = jnp.array([[1.0, -1.0, 0.5, 0.0], [0.5, 0.5, -1.0, 2.0]])
        >>> y = jnp.array([0, 3, -100])
        >>> log_probs, entropy = jl.linear_log_probs(x, w, y)
        >>> log_probs
        Array([-0.7887, -0.1081,  0.    ], dtype=float32)
        >>> jl.log_softmax(x @ w)[jnp.arange(2), y[:2]]  # the same, unfused
        Array([-0.7887, -0.1081], dtype=float32)
        >>> entropy
        Array([1.163, 0.398, 0.   ], dtype=float32)
        >>> def objective(x):  # advantages times log-probabilities, plus an entropy bonus
        ...     log_probs, entropy = jl.linear_log_probs(x, w, y)
        ...     return jnp.sum(jnp.array([1.0, -0.5, 2.0]) * log_probs + 0.01 * entropy)
        >>> jax.grad(objective)(x)
        Array([[ 0.5399, -0.3379],
               [-0.0236, -0.0822],
               [ 0.    ,  0.    ]], dtype=float32)
    """
    x, w = driver.check_head(x, w, " (for a (V, H) embedding matrix pass emb.T)")
    vocab = w.shape[1]
    if bias is not None:
        bias = _checks.floating_input("bias", bias)
        if bias.shape != (vocab,):
            raise ValueError(f"bias must have shape ({vocab},), got {bias.shape}")
    _, plan = driver.check_token_options(
        x,
        w,
        reduction="none",
        token_weight=None,
        segment_ids=None,
        normalizer=None,
        chunk_size=chunk_size,
        passes=None,
        vocab_chunk_size=vocab_chunk_size,
        vocab_size=vocab_size,
    )
    temperature = _checks.real_scalar("temperature", temperature, minimum=0.0, strict=True)
    codes = driver.token_codes(targets, x, plan.vocab_size, _checks.ignore_index(ignore_index))
    return _linear_log_probs(x, w, bias, codes, plan, temperature)
