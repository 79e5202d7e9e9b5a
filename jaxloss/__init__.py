"""jaxloss: classification losses for JAX with hand-derived gradients and PyTorch semantics."""

from jaxloss._binary import binary_cross_entropy, binary_cross_entropy_with_logits
from jaxloss._classification import cross_entropy, nll_loss
from jaxloss._contrastive import (
    contrastive_loss,
    ntxent_loss,
    sigmoid_contrastive_loss,
)
from jaxloss._ctc import ctc_loss, ctc_loss_with_paddings
from jaxloss._distill import linear_jsd, linear_kl_div
from jaxloss._divergence import kl_div
from jaxloss._focal import poly1_cross_entropy, sigmoid_focal_loss, softmax_focal_loss
from jaxloss._linear import linear_cross_entropy
from jaxloss._logprobs import linear_log_probs
from jaxloss._margin import (
    hinge_embedding_loss,
    hinge_loss,
    multi_margin_loss,
    multiclass_hinge_loss,
    multiclass_perceptron_loss,
    multilabel_margin_loss,
    multilabel_soft_margin_loss,
    perceptron_loss,
    soft_margin_loss,
)
from jaxloss._overlap import dice_loss, generalized_dice_loss, tversky_loss
from jaxloss._softmax import log_sigmoid, log_softmax, softmax
from jaxloss._sparsemax import multiclass_sparsemax_loss, sparsemax, sparsemax_loss

__version__ = "0.1.0"

__all__ = [
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "contrastive_loss",
    "cross_entropy",
    "ctc_loss",
    "ctc_loss_with_paddings",
    "dice_loss",
    "generalized_dice_loss",
    "hinge_embedding_loss",
    "hinge_loss",
    "kl_div",
    "linear_cross_entropy",
    "linear_jsd",
    "linear_kl_div",
    "linear_log_probs",
    "log_sigmoid",
    "log_softmax",
    "multi_margin_loss",
    "multiclass_hinge_loss",
    "multiclass_perceptron_loss",
    "multiclass_sparsemax_loss",
    "multilabel_margin_loss",
    "multilabel_soft_margin_loss",
    "nll_loss",
    "ntxent_loss",
    "perceptron_loss",
    "poly1_cross_entropy",
    "sigmoid_focal_loss",
    "sigmoid_contrastive_loss",
    "soft_margin_loss",
    "softmax",
    "softmax_focal_loss",
    "sparsemax",
    "sparsemax_loss",
    "tversky_loss",
]
