"""The machinery beneath the fused losses (``linear_cross_entropy``, ``linear_kl_div``).

A fused loss is a *head* (``engine.Head``): what it computes from one chunk of raw
logits ``z = x @ w + bias``. The engine owns the loops, once: the chunking of the
tokens and of the vocabulary (``chunking``), the passes, the gradients of ``x``, ``w``
and ``bias``, and the tuning knobs (``engine.Config``). ``driver`` is what every public
fused loss does around its head: the shared checks, the per-token arrays placed and
flattened, dropped tokens ignored, the reduction and the cast.
"""
