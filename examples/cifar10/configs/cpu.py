"""A CPU run of about 8 minutes on 2 cores: ResNet-9 at width 16, 4 epochs over
10,240 of the training images, evaluated on the whole test set after each epoch."""

from configs import Config


def get_config() -> Config:
    return Config(
        epochs=4,
        batch_size=256,
        train_subset=10240,
        width=16,
        peak_learning_rate=0.2,
        expected_duration=(
            "about 8 minutes on a 2-core CPU (measured on a synthetic set of CIFAR-10's size)"
        ),
    )
