"""Every public function lowers for GPU and TPU, value and gradient, from a CPU-only install.

``jax.export`` lowers a jitted function for platforms that are not present, so a
construct that a backend cannot compile (a host callback, a CPU-only custom call)
fails here without the hardware.
"""

import jax
import jax.numpy as jnp
import pytest

import jaxloss as jl

PLATFORMS = ("cuda", "rocm", "tpu")
X = jax.ShapeDtypeStruct((8, 16), jnp.float32)
X16 = jax.ShapeDtypeStruct((8, 16), jnp.bfloat16)
Y = jax.ShapeDtypeStruct((8,), jnp.int32)
W = jax.ShapeDtypeStruct((16,), jnp.float32)
XB = jax.ShapeDtypeStruct((3, 8, 16), jnp.bfloat16)
YB = jax.ShapeDtypeStruct((3, 8), jnp.int32)

CASES = {
    "log_softmax": (lambda x: jl.log_softmax(x).sum(), (X,)),
    "softmax": (lambda x: jl.softmax(x)[:, 0].sum(), (X,)),
    "log_sigmoid": (lambda x: jl.log_sigmoid(x).sum(), (X,)),
    "nll_loss": (lambda x, y, w: jl.nll_loss(x, y, weight=w), (X, Y, W)),
    "cross_entropy index": (
        lambda x, y, w: jl.cross_entropy(x, y, weight=w, label_smoothing=0.1, z_loss=1e-4),
        (X, Y, W),
    ),
    "cross_entropy probs": (lambda x, t: jl.cross_entropy(x, t, label_smoothing=0.1), (X, X)),
    "cross_entropy bf16 softcap": (
        lambda x, y: jl.cross_entropy(x, y, logit_softcap=30.0),
        (X16, Y),
    ),
    "ctc_loss": (
        lambda lp, y, n, m: jl.ctc_loss(lp, y, n, m, blank=2, zero_infinity=True),
        (
            jax.ShapeDtypeStruct((12, 3, 16), jnp.float32),
            jax.ShapeDtypeStruct((3, 4), jnp.int32),
            jax.ShapeDtypeStruct((3,), jnp.int32),
            jax.ShapeDtypeStruct((3,), jnp.int32),
        ),
    ),
    "ctc_loss_with_paddings": (
        lambda z, zp, y, yp: jl.ctc_loss_with_paddings(z, zp, y, yp, reduction="mean"),
        (
            XB,
            jax.ShapeDtypeStruct((3, 8), jnp.float32),
            YB,
            jax.ShapeDtypeStruct((3, 8), jnp.float32),
        ),
    ),
    "multi_margin_loss": (lambda x, y, w: jl.multi_margin_loss(x, y, p=2, weight=w), (X, Y, W)),
    "multilabel_margin_loss": (
        lambda x, y: jl.multilabel_margin_loss(x, y),
        (X16, jax.ShapeDtypeStruct((8, 16), jnp.int32)),
    ),
    "multilabel_soft_margin_loss": (
        lambda x, t, w: jl.multilabel_soft_margin_loss(x, t, weight=w),
        (X, X, W),
    ),
    "soft_margin_loss": (lambda x, t: jl.soft_margin_loss(x, t), (X16, X)),
    "hinge_embedding_loss": (lambda x, t: jl.hinge_embedding_loss(x, t, margin=0.5), (X, X)),
    "hinge_loss": (lambda x, t: jl.hinge_loss(x, t), (X, X)),
    "perceptron_loss": (lambda x, t: jl.perceptron_loss(x, t), (X16, X)),
    "multiclass_hinge_loss": (lambda x, y: jl.multiclass_hinge_loss(x, y), (X, Y)),
    "multiclass_perceptron_loss": (lambda x, y: jl.multiclass_perceptron_loss(x, y), (X16, Y)),
    "sparsemax": (lambda x: jl.sparsemax(x, axis=0)[0].sum(), (X16,)),
    "sparsemax_loss": (lambda x, t: jl.sparsemax_loss(x, t), (X, X)),
    "multiclass_sparsemax_loss": (lambda x, y: jl.multiclass_sparsemax_loss(x, y), (X16, Y)),
    "dice_loss": (lambda x, y: jl.dice_loss(x, y), (XB, YB)),
    "tversky_loss": (
        lambda x, t: jl.tversky_loss(x, t, alpha=0.3, beta=0.7, axis=1, per_sample=False),
        (XB, XB),
    ),
    "generalized_dice_loss": (lambda x, y: jl.generalized_dice_loss(x, y), (X16, Y)),
    "binary_cross_entropy_with_logits": (
        lambda x, t: jl.binary_cross_entropy_with_logits(x, t, pos_weight=jnp.full(16, 2.0)),
        (X, X),
    ),
    "binary_cross_entropy": (lambda p, t: jl.binary_cross_entropy(p, t), (X, X)),
    "kl_div": (lambda q, t: jl.kl_div(q, t, reduction="batchmean"), (X, X)),
    "sigmoid_focal_loss": (lambda x, t: jl.sigmoid_focal_loss(x, t, gamma=0.5), (X, X)),
    "softmax_focal_loss": (
        lambda x, y, w: jl.softmax_focal_loss(x, y, alpha=w, label_smoothing=0.1),
        (X16, Y, W),
    ),
    "poly1_cross_entropy": (lambda x, t: jl.poly1_cross_entropy(x, t, epsilon=2.0), (X, X)),
    "linear_cross_entropy": (
        lambda x, w, y: jl.linear_cross_entropy(x, w, y, chunk_size=4, label_smoothing=0.1),
        (X, jax.ShapeDtypeStruct((16, 32), jnp.float32), Y),
    ),
    "linear_cross_entropy two passes": (
        lambda x, w, y: jl.linear_cross_entropy(
            x, w, y, chunk_size=4, vocab_chunk_size=12, return_aux=True
        )[0],
        (X16, jax.ShapeDtypeStruct((16, 32), jnp.bfloat16), Y),
    ),
    "linear_cross_entropy token options": (
        lambda x, w, y, t: jl.linear_cross_entropy(
            x, w, y, chunk_size=4, reduction="sequence_mean", token_weight=t, segment_ids=y // 8
        ),
        (
            X16,
            jax.ShapeDtypeStruct((16, 32), jnp.bfloat16),
            Y,
            jax.ShapeDtypeStruct((8,), jnp.float32),
        ),
    ),
    "cross_entropy sequence_mean": (
        lambda x, y, t: jl.cross_entropy(
            x, y, reduction="sequence_mean", token_weight=t, normalizer=3.0
        ),
        (X, Y, jax.ShapeDtypeStruct((8,), jnp.float32)),
    ),
    "linear_kl_div": (
        lambda x, w, tx, tw: jl.linear_kl_div(x, w, tx, tw, chunk_size=4, temperature=2.0),
        (
            X,
            jax.ShapeDtypeStruct((16, 32), jnp.float32),
            X16,
            jax.ShapeDtypeStruct((16, 32), jnp.bfloat16),
        ),
    ),
    "linear_kl_div topk none": (
        lambda x, w, ids, lp: jl.linear_kl_div(
            x, w, teacher_topk=(ids, lp), reduction="none"
        ).sum(),
        (
            X16,
            jax.ShapeDtypeStruct((16, 32), jnp.bfloat16),
            jax.ShapeDtypeStruct((8, 4), jnp.int32),
            jax.ShapeDtypeStruct((8, 4), jnp.float32),
        ),
    ),
    # Under vmap the fused losses run one example at a time (a custom batching rule).
    "linear_cross_entropy vmap": (
        lambda w, x, y: jax.vmap(lambda a, b: jl.linear_cross_entropy(a, w, b, chunk_size=4))(
            x, y
        ).sum(),
        (jax.ShapeDtypeStruct((16, 32), jnp.float32), XB, YB),
    ),
    "linear_kl_div vmap": (
        lambda w, x, y: jax.vmap(lambda a, b: jl.linear_kl_div(a, w, a, w, targets=b))(x, y).sum(),
        (jax.ShapeDtypeStruct((16, 32), jnp.bfloat16), XB, YB),
    ),
    "linear_jsd": (
        lambda x, w, tx, tw: jl.linear_jsd(x, w, tx, tw, beta=0.3, chunk_size=4, temperature=2.0),
        (
            X,
            jax.ShapeDtypeStruct((16, 32), jnp.float32),
            X16,
            jax.ShapeDtypeStruct((16, 32), jnp.bfloat16),
        ),
    ),
    "linear_jsd none two passes": (
        lambda x, w, tx, tw: jl.linear_jsd(
            x, w, tx, tw, beta=1.0, reduction="none", passes=2
        ).sum(),
        (
            X16,
            jax.ShapeDtypeStruct((16, 32), jnp.bfloat16),
            X16,
            jax.ShapeDtypeStruct((16, 32), jnp.bfloat16),
        ),
    ),
    "linear_log_probs": (
        lambda x, w, y, b: sum(
            jnp.sum(o.astype(jnp.float32)) for o in jl.linear_log_probs(x, w, y, bias=b)
        ),
        (
            X16,
            jax.ShapeDtypeStruct((16, 32), jnp.bfloat16),
            Y,
            jax.ShapeDtypeStruct((32,), jnp.float32),
        ),
    ),
    "linear_log_probs vmap": (
        lambda w, x, y: jax.vmap(lambda a, b: jl.linear_log_probs(a, w, b)[0])(x, y).sum(),
        (jax.ShapeDtypeStruct((16, 32), jnp.float32), XB, YB),
    ),
    "contrastive_loss": (
        lambda x, y, s, b: jl.contrastive_loss(
            x, y, logit_scale=s, logit_bias=b, label_smoothing=0.1, chunk_size=4
        ),
        (X16, X16, jax.ShapeDtypeStruct((), jnp.float32), jax.ShapeDtypeStruct((), jnp.float32)),
    ),
    "contrastive_loss one direction none": (
        lambda x, y: jl.contrastive_loss(x, y, direction="y_to_x", reduction="none").sum(),
        (X, X),
    ),
    "sigmoid_contrastive_loss": (
        lambda x, y, s, b: jl.sigmoid_contrastive_loss(
            x, y, logit_scale=s, logit_bias=b, chunk_size=4
        ),
        (X16, X, jax.ShapeDtypeStruct((), jnp.float32), jax.ShapeDtypeStruct((), jnp.float32)),
    ),
    "ntxent_loss": (
        lambda e, y, t: jl.ntxent_loss(e, y // 2, t, chunk_size=4),
        (X, Y, jax.ShapeDtypeStruct((), jnp.float32)),
    ),
    "linear_cross_entropy none": (
        lambda x, w, y: jl.linear_cross_entropy(x, w, y, reduction="none").sum(),
        (X16, jax.ShapeDtypeStruct((16, 32), jnp.bfloat16), Y),
    ),
}


def test_every_public_function_has_a_case():
    covered = {name.split()[0] for name in CASES}
    assert covered == set(jl.__all__)


@pytest.mark.exhaustive(quick_cases=1)
@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("what", ["value", "gradient"])
def test_exports_for_gpu_and_tpu(name, what):
    fn, shapes = CASES[name]
    if what == "gradient":
        fn = jax.grad(fn)
    exported = jax.export.export(jax.jit(fn), platforms=PLATFORMS)(*shapes)
    assert tuple(exported.platforms) == PLATFORMS
    assert "stablehlo" in exported.mlir_module()
    assert "custom_call @xla_python_cpu_callback" not in exported.mlir_module()
