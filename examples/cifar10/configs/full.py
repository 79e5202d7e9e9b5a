"""The full recipe, for a GPU or TPU: ResNet-9 (width 64), 24 epochs, batch 512.

The recipe of David Page's "How to train your ResNet" (2018), with which he
reported 94% CIFAR-10 test accuracy in 24 epochs on one V100 (his PyTorch code;
this JAX version has not been run on the real data or on a GPU yet).
"""

from configs import Config


def get_config() -> Config:
    return Config(
        epochs=24,
        batch_size=512,
        width=64,
        expected_duration=(
            "24 epochs of ResNet-9 at width 64: about 7 hours on a 2-core CPU at the 47 "
            "images/s measured there (use --config cpu on a CPU); not yet measured on a GPU"
        ),
    )
