"""The test tiers and the compilation cache the test processes share.

``pytest`` runs the quick tier: every test not marked ``exhaustive``. ``pytest --tier
exhaustive`` runs the tests marked ``exhaustive`` (the end-to-end runs on 8 devices and
several processes, the full CIFAR-10 and benchmark runs, the long property and
finite-difference sweeps); ``--tier all`` runs both. The two tiers split the tests: each
test is in exactly one.

Most of the suite's time is XLA compiling small programs. Compiled programs are cached
on disk in ``.jax_cache`` (unless ``JAX_COMPILATION_CACHE_DIR`` says otherwise), shared
by pytest-xdist's workers and by the processes the tests start, so that a program that
several tests compile is compiled once; the cache is keyed by the program and the jax
version, and deleting the folder only costs time.
"""

import os
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent
TIERS = ("quick", "exhaustive", "all")

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(ROOT / ".jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

# Started first, longest first, so that pytest-xdist's workers share them from the start
# rather than one worker running a long test at the end while the other waits.
LONG_RUNNING = (
    "tests/test_sharding.py::test_fused_losses_compile_in_every_layout_mode_and_dtype",
    "tests/test_sharding.py::test_fused_losses_equal_one_device_in_every_layout",
    "tests/test_overlap.py::test_tversky_and_dice_match_optax",
    "tests/test_sharding.py::test_fused_losses_communicate_as_the_unfused_loss",
    "examples/cifar10/train_test.py::test_main_trains_evaluates_and_reports",
    "tests/test_benchmark.py::test_benchmark_command_smoke",
    "tests/test_gradients.py::test_property_cross_entropy_matches_naive_value_and_gradient",
    "tests/test_tokens.py::test_sequence_mean_property",
    "tests/test_multiprocess.py",
    "tests/test_sharding.py",
    "tests/test_linear.py::test_finite_differences",
    "tests/test_ctc.py::test_matches_pytorch_through_log_softmax",
    "examples/",
)


def pytest_addoption(parser):
    parser.addoption(
        "--tier",
        choices=TIERS,
        default="quick",
        help="quick (default): the tests not marked exhaustive; exhaustive: only those; all: both",
    )


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "exhaustive(quick_cases=0): in the exhaustive tier (pytest --tier exhaustive), "
        "but for the first quick_cases cases of a parametrized test",
    )


def exhaustive_items(items):
    """The items marked ``exhaustive``. ``@pytest.mark.exhaustive(quick_cases=k)`` on a
    parametrized test keeps its first ``k`` cases (in collection order) in the quick tier."""
    seen: dict[tuple, int] = {}
    chosen = set()
    for item in items:
        marker = item.get_closest_marker("exhaustive")
        if marker is None:
            continue
        key = (item.path, getattr(item, "originalname", item.name))
        position = seen[key] = seen.get(key, -1) + 1
        if position >= marker.kwargs.get("quick_cases", 0):
            chosen.add(item.nodeid)
    return chosen


def pytest_collection_modifyitems(config, items):
    tier = config.getoption("tier")
    exhaustive = exhaustive_items(items)

    def in_tier(item):
        return tier == "all" or (item.nodeid in exhaustive) == (tier == "exhaustive")

    selected = [item for item in items if in_tier(item)]
    deselected = [item for item in items if not in_tier(item)]
    if deselected:
        config.hook.pytest_deselected(items=deselected)

    def start_order(item):
        return next(
            (i for i, prefix in enumerate(LONG_RUNNING) if item.nodeid.startswith(prefix)),
            len(LONG_RUNNING),
        )

    items[:] = sorted(selected, key=start_order)
