import json
import pathlib

import jax
import pytest

SEED_CASES = pathlib.Path(__file__).resolve().parent / "data" / "seed_examples.json"


@pytest.fixture
def x64():
    """Runs the test body with float64 enabled, for references and finite differences."""
    with jax.enable_x64(True):
        yield


def seed_cases():
    return json.loads(SEED_CASES.read_text())["cases"]
