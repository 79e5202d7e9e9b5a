import json
import pathlib

import jax
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


@pytest.fixture
def x64():
    """Runs the test body with float64 enabled, for references and finite differences."""
    with jax.enable_x64(True):
        yield


def seed_cases():
    path = SHARED / "cases" / "seed_examples.json"
    if not path.exists():
        return []
    return json.loads(path.read_text())["cases"]
