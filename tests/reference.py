"""Naive references written straight from the formulas, for float64 comparison and autodiff.

They use plain ``jax.numpy`` with no custom rules, no shifts beyond what a
textbook would write, and the class axis moved last, so that both their values
(under ``enable_x64``) and ``jax.grad`` of them are independent of jaxloss. Each is
compiled whole (``jax.jit``, options that select code static): dispatching a naive
formula op by op at every new shape is what would cost the suite its time.
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np


@jax.jit
def log_softmax(x, where=None):
    if where is not None:
        x = jnp.where(where, x, -jnp.inf)
    m = jnp.max(x, axis=-1, keepdims=True)
    return x - m - jnp.log(jnp.sum(jnp.exp(x - m), axis=-1, keepdims=True))


@partial(jax.jit, static_argnames=("reduction",))
def cross_entropy_index(
    logits, targets, weight=None, ignore_index=-100, reduction="mean", eps=0.0, where=None
):
    """PyTorch's cross_entropy with class indices, written as PyTorch documents it."""
    num_classes = logits.shape[-1]
    logp = log_softmax(logits, where)
    w = jnp.ones(num_classes, logits.dtype) if weight is None else weight
    keep = targets != ignore_index
    safe = jnp.where(keep, targets, 0)
    nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0] * w[safe]
    valid = jnp.isfinite(logp)
    k = jnp.sum(valid, axis=-1)
    smooth = -jnp.sum(jnp.where(valid, w * logp, 0.0), axis=-1) / k
    per = jnp.where(keep, (1 - eps) * nll + eps * smooth, 0.0)
    if reduction == "none":
        return per
    if reduction == "sum":
        return per.sum()
    return per.sum() / jnp.sum(jnp.where(keep, w[safe], 0.0))


@partial(jax.jit, static_argnames=("reduction",))
def cross_entropy_probs(logits, targets, weight=None, reduction="mean", eps=0.0):
    num_classes = logits.shape[-1]
    logp = log_softmax(logits)
    t = targets * (1 - eps) + eps / num_classes
    w = jnp.ones(num_classes, logits.dtype) if weight is None else weight
    per = -jnp.sum(w * t * logp, axis=-1)
    return {"none": per, "sum": per.sum(), "mean": per.mean()}[reduction]


@partial(jax.jit, static_argnames=("reduction",))
def nll_loss(log_probs, targets, weight=None, ignore_index=-100, reduction="mean"):
    num_classes = log_probs.shape[-1]
    w = jnp.ones(num_classes, log_probs.dtype) if weight is None else weight
    keep = targets != ignore_index
    safe = jnp.where(keep, targets, 0)
    picked = jnp.take_along_axis(log_probs, safe[..., None], axis=-1)[..., 0]
    per = jnp.where(keep, -w[safe] * picked, 0.0)
    if reduction == "none":
        return per
    if reduction == "sum":
        return per.sum()
    return per.sum() / jnp.sum(jnp.where(keep, w[safe], 0.0))


@jax.jit
def sigmoid(x):
    return 1 / (1 + jnp.exp(-x))


@partial(jax.jit, static_argnames=("reduction",))
def bce_with_logits(x, t, weight=None, pos_weight=None, reduction="mean"):
    w = 1.0 if weight is None else weight
    pw = 1.0 if pos_weight is None else pos_weight
    per = -w * (pw * t * jnp.log(sigmoid(x)) + (1 - t) * jnp.log(1 - sigmoid(x)))
    return {"none": per, "sum": per.sum(), "mean": per.mean()}[reduction]


@partial(jax.jit, static_argnames=("reduction",))
def bce(p, t, weight=None, reduction="mean"):
    w = 1.0 if weight is None else weight
    per = -w * (t * jnp.maximum(jnp.log(p), -100) + (1 - t) * jnp.maximum(jnp.log(1 - p), -100))
    return {"none": per, "sum": per.sum(), "mean": per.mean()}[reduction]


@partial(jax.jit, static_argnames=("reduction", "log_target"))
def kl_div(log_q, t, reduction="mean", log_target=False):
    if log_target:
        per = jnp.exp(t) * (t - log_q)
    else:
        per = t * (jnp.log(t) - log_q)
    return {
        "none": per,
        "sum": per.sum(),
        "mean": per.mean(),
        "batchmean": per.sum() / log_q.shape[0],
    }[reduction]


def reduce_tokens(per, share, reduction, token_weight=None, segment_ids=None, normalizer=None):
    """The token reductions written as loops over sequences, in float64 NumPy.

    ``per`` are the per-element losses with class weights, ``share`` each element's
    share of the mean's denominator (its class weight, 0 if ignored); rows are the
    last axis. A token weight or segment id of 0 drops the element.
    """
    per = np.asarray(per, np.float64)
    share = np.asarray(share, np.float64)
    t = np.ones_like(per) if token_weight is None else np.asarray(token_weight, np.float64)
    keep = t != 0
    if segment_ids is not None:
        keep &= np.asarray(segment_ids) != 0
    per = np.where(keep, per * t, 0.0)
    share = np.where(keep, share * t, 0.0)
    if reduction == "none":
        return per
    if reduction == "sum":
        return per.sum()
    if reduction == "mean":
        denominator = share.sum() if normalizer is None else normalizer
        return per.sum() / denominator if denominator else 0.0
    rows_per = per.reshape(-1, per.shape[-1]) if per.ndim else per.reshape(1, 1)
    rows_share = share.reshape(rows_per.shape)
    if segment_ids is None:
        rows_seg = np.ones(rows_per.shape, int)
    else:
        rows_seg = np.where(keep, np.asarray(segment_ids), 0).reshape(rows_per.shape)
    means = []
    for r in range(rows_per.shape[0]):
        for s in sorted(set(rows_seg[r].tolist()) - {0}):
            members = rows_seg[r] == s
            total = rows_share[r][members].sum()
            if total != 0:
                means.append(rows_per[r][members].sum() / total)
    count = len(means) if normalizer is None else normalizer
    return sum(means) / count if count else 0.0
