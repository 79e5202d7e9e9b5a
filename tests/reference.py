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
