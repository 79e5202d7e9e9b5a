"""Quickstart: the worked examples, each loss and gradient next to its hand-derived gradient.

Run:  python examples/quickstart.py [path/to/seed_examples.json]
"""

from __future__ import annotations

import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

import jaxloss as jl

DEFAULT_CASES = (
    pathlib.Path(__file__).resolve().parents[1] / "tests" / "data" / "seed_examples.json"
)


def hand_gradient(case, first):
    """The closed-form gradient of the mean loss with respect to its first argument."""
    targets = jnp.asarray(case["targets"])
    n = targets.shape[0]
    if case["fn"] == "cross_entropy":
        t = (
            targets
            if jnp.issubdtype(targets.dtype, jnp.floating)
            else jax.nn.one_hot(targets, first.shape[-1])
        )
        return (jax.nn.softmax(first) - t) / n  # (softmax(x) - t) / N
    if case["fn"] == "nll_loss":
        return -jax.nn.one_hot(targets, first.shape[-1]) / n  # -onehot(y) / N
    if case["fn"] == "binary_cross_entropy_with_logits":
        return (jax.nn.sigmoid(first) - targets) / n  # (sigma(x) - t) / N
    if case["fn"] == "binary_cross_entropy":
        return (first - targets) / (first * (1 - first)) / n  # (p - t) / (p (1 - p) N)
    return None


def _fmt(array) -> str:
    return str(np.round(np.asarray(array, np.float64), 4).tolist())


def run(path: pathlib.Path) -> int:
    cases = json.loads(path.read_text())["cases"]
    worst = 0.0
    for i, case in enumerate(cases):
        fn = getattr(jl, case["fn"])
        if case["fn"] in ("softmax", "log_softmax"):
            out = fn(jnp.asarray(case["x"]))
            err = float(np.max(np.abs(np.asarray(out) - np.asarray(case["out"]))))
            worst = max(worst, err)
            print(f"[{i:2d}] {case['fn']}: {_fmt(out)}  (expected {case['out']})")
            continue
        if "logits" in case:
            first = jnp.asarray(case["logits"])
        elif "log_probs_of" in case:
            first = jl.log_softmax(jnp.asarray(case["log_probs_of"]))
        else:
            first = jax.nn.sigmoid(jnp.asarray(case["probs_of"]))
        targets = jnp.asarray(case["targets"])
        kwargs = case.get("kwargs", {})
        loss = fn(first, targets, **kwargs)
        err = float(np.max(np.abs(np.asarray(loss) - np.asarray(case["loss"]))))
        worst = max(worst, err)
        print(
            f"[{i:2d}] {case['fn']}({kwargs or ''}): loss {_fmt(loss)}  (expected {case['loss']})"
        )
        if kwargs.get("reduction", "mean") == "mean":
            grad = jax.grad(fn)(first, targets, **kwargs)
            hand = hand_gradient(case, first)
            gap = float(jnp.max(jnp.abs(grad - hand)))
            printed_grad = case.get("grad")
            print(f"     jax.grad: {_fmt(grad)}")
            print(f"     by hand:  {_fmt(hand)}  (max gap {gap:.1e})")
            if printed_grad is not None:
                gap_printed = np.max(np.abs(np.asarray(grad) - np.asarray(printed_grad)))
                worst = max(worst, float(gap_printed))
            worst = max(worst, gap)
    ok = worst <= 1e-4
    print(
        f"\n{len(cases)} worked examples, largest deviation {worst:.1e}: {'OK' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(run(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_CASES))
