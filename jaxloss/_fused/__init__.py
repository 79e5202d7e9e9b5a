"""The engine beneath the fused losses (``linear_cross_entropy``, ``linear_kl_div``).

A fused loss is a *head* (``engine.Head``): what it computes from one chunk of raw
logits ``z = x @ w + bias``. The engine owns everything else, once: the chunking of the
tokens and of the vocabulary (``chunking``), the loops, the gradients of ``x``, ``w``
and ``bias``, and the tuning knobs (``engine.Config``).
"""
