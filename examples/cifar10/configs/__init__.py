"""Training configurations of the CIFAR-10 example.

``Config`` holds every setting of a run; each preset module (``full``, ``cpu``)
returns one from ``get_config()``. ``main.py --config NAME`` picks a preset and
its flags override single fields.
"""

from __future__ import annotations

import dataclasses
import importlib


@dataclasses.dataclass(frozen=True)
class Config:
    epochs: int = 24
    batch_size: int = 512
    # Training images used per epoch (the first ones of a fixed shuffle); None: all.
    train_subset: int | None = None
    peak_learning_rate: float = 0.4
    warmup_fraction: float = 0.2
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.2
    width: int = 64
    dtype: str = "float32"
    seed: int = 0
    data_dir: str = "data"
    download: bool = True
    download_url: str = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    progress: bool = True
    # What a run of this preset is expected to take, printed at the start.
    expected_duration: str = ""


PRESETS = ("full", "cpu")


def get(name: str) -> Config:
    """The preset ``name`` (one of ``PRESETS``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {PRESETS}")
    return importlib.import_module(f"configs.{name}").get_config()
