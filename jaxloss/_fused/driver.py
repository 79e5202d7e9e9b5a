"""What every fused loss does around its head, once.

Before tracing (``check_head``, ``check_token_options``, ``token_codes``): the checks of
``x``, ``w``, the token ids and the token options, and the engine's ``Config``. Traced
(``fused_loss``): the per-token arrays placed where the tokens are, the dropped tokens
(token weight 0, segment 0) marked ignored, everything flattened to ``[n, ...]``, the
reduction (``"none"`` is ``per_token.per_token_values``; the others are one
``engine.fused_sum`` with per-token factors) and the cast to the inputs' dtype.

A public fused loss checks its own arguments, then calls these with its head, the
head's per-token arrays and its constant inputs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxloss import _checks
from jaxloss._checks import TokenWeighting
from jaxloss._fused import engine, per_token
from jaxloss._reduce import dropped_elements, element_scales, like_tokens
from jaxloss._targets import IGNORED, resolve_targets


class Plan(NamedTuple):
    """The static part of a fused call (it keys ``jit``'s cache): the reduction, the
    engine's knobs and the number of vocabulary entries in use."""

    reduction: str
    config: engine.Config
    vocab_size: int


def check_head(x, w, hint: str = "") -> tuple[jax.Array, jax.Array]:
    """``x`` ``[..., H]`` and ``w`` ``[H, V]`` as floating arrays; ``hint`` ends the
    message of a ``w`` of the wrong shape."""
    x = _checks.floating_input("x", x, min_ndim=1)
    w = _checks.floating_input("w", w)
    if w.ndim != 2 or w.shape[0] != x.shape[-1]:
        raise ValueError(
            f"w must have shape (H, V) with H = x.shape[-1] = {x.shape[-1]}, got {w.shape}{hint}"
        )
    _checks.has_classes("w", w.shape, 1, "vocabulary entry")
    return x, w


def check_token_options(
    x: jax.Array,
    w: jax.Array,
    *,
    reduction,
    token_weight,
    segment_ids,
    normalizer,
    chunk_size,
    passes,
    vocab_chunk_size,
    vocab_size,
) -> tuple[TokenWeighting, Plan]:
    """The token weighting and the ``Plan`` of a call with checked ``x`` and ``w``."""
    reduction = _checks.reduction(reduction, _checks.TOKEN_REDUCTIONS)
    weighting = _checks.token_weighting(
        token_weight, segment_ids, normalizer, reduction, x.shape[:-1]
    )
    chunk_size = _checks.optional_positive_int("chunk_size", chunk_size)
    passes = _checks.passes(passes)
    vocab_chunk_size = _checks.optional_positive_int("vocab_chunk_size", vocab_chunk_size)
    vocab_size = _checks.vocab_size(vocab_size, w.shape[1])
    engine.check_layout(x, w)
    # Resolved here, outside jit, so that they key its cache.
    config = engine.Config.resolve(
        x, w, chunk_size=chunk_size, passes=passes, vocab_chunk_size=vocab_chunk_size
    )
    if reduction == "none":  # the vocabulary scan of per_token takes all the tokens at once
        width = per_token.vocab_width(x, w, config.vocab_chunk_size if vocab_chunk_size else None)
        config = dataclasses.replace(config, vocab_chunk_size=width)
    return weighting, Plan(reduction, config, vocab_size)


def token_codes(targets, x: jax.Array, vocab_size: int, ignore_index: int) -> jax.Array:
    """Integer token ids of ``x``'s token shape, resolved (``IGNORED``, ``OUT_OF_RANGE``
    or the class) for ``vocab_size`` classes; ``ignore_index`` already checked."""
    targets = _checks.as_array("targets", targets)
    if not jnp.issubdtype(targets.dtype, jnp.integer):
        raise TypeError(f"targets must be integer token ids, got dtype {targets.dtype}")
    if targets.shape != x.shape[:-1]:
        raise ValueError(
            f"targets must have shape {x.shape[:-1]} (x's shape without the hidden axis), "
            f"got {targets.shape}"
        )
    return resolve_targets(targets, vocab_size, ignore_index)


class HeadTokens(NamedTuple):
    """What a head makes of the flat tokens: ``x`` ``[n, H]`` (as given or changed), the
    head's per-token arrays, and each token's share of the mean's denominator before
    its token weight (``element_scales``)."""

    x: jax.Array
    tokens: Any
    share: jax.Array


class FusedLoss(NamedTuple):
    loss: jax.Array  # reduced, or of the tokens' shape for "none"; in the inputs' dtype
    stats: jax.Array  # [n, head.stats_width]
    codes: jax.Array  # [n], the resolved ids with the dropped tokens ignored


def _per_token_loss(head: engine.Head, given: HeadTokens, w, bias, params, config: engine.Config):
    """``"none"``: the per-token losses, differentiable for any cotangent (a JVP rule
    whose reverse mode forms each vocabulary chunk of ``dw`` once), and the statistics
    of ``return_aux`` from a forward pass of their own (without them, none)."""
    tokens = given.tokens
    one = per_token.OneOutput(head)
    loss = per_token.per_token_values(one, config, given.x, w, bias, tokens, params)[:, 0]
    stats = jnp.zeros((given.x.shape[0], 0), loss.dtype)
    if head.stats_width:
        scale = jnp.zeros_like(given.share)
        args = jax.lax.stop_gradient((given.x, w, bias))
        _, stats = engine.fused_sum(head, *args, tokens, params, scale, config)
    return loss, stats


def fused_loss(
    head: engine.Head,
    x: jax.Array,
    w: jax.Array,
    bias: jax.Array | None,
    codes: jax.Array,
    per_token: Any,
    params: Any,
    weighting: TokenWeighting,
    plan: Plan,
    head_tokens: Callable[[jax.Array, jax.Array, Any], HeadTokens],
) -> FusedLoss:
    """The reduced loss of ``head`` over ``x`` ``[..., H]`` (traced).

    ``codes`` are the resolved ids of the tokens and ``per_token`` any other arrays of
    the tokens' shape plus trailing axes (a pytree); both are placed like ``x``'s tokens
    and flattened, and ``head_tokens(x2, codes, per_token)`` turns them into the head's
    ``HeadTokens``. ``params`` are the head's constant inputs.
    """
    acc = engine.accumulation_dtype(x, w)
    # Per-token arrays replicated while the tokens are sharded (explicit mode) go where
    # the tokens are.
    codes, per_token, weighting = like_tokens(
        (codes, per_token, jax.lax.stop_gradient(weighting)), x
    )
    dropped = dropped_elements(weighting.token_weight, weighting.segment_ids)
    if dropped is not None:
        codes = jnp.where(dropped, IGNORED, codes)
    shape, flat = codes.shape, codes.reshape(-1)
    per_token = jax.tree.map(lambda a: a.reshape(flat.shape[0], *a.shape[codes.ndim :]), per_token)
    given = head_tokens(x.reshape(-1, w.shape[0]), flat, per_token)
    if plan.reduction == "none":
        loss, stats = _per_token_loss(head, given, w, bias, params, plan.config)
        loss = loss.reshape(shape)
        if weighting.token_weight is not None:
            loss = loss * weighting.token_weight.astype(acc)
    else:
        share = given.share.reshape(shape)
        token_scale = element_scales(plan.reduction, share, *weighting).reshape(-1)
        loss, stats = engine.fused_sum(
            head, given.x, w, bias, given.tokens, params, token_scale, plan.config
        )
    return FusedLoss(loss.astype(jnp.promote_types(x.dtype, w.dtype)), stats, flat)
