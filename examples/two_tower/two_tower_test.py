"""The two-tower example, launched as its docstring says (8 host devices are set when
it starts, so in a fresh process)."""

import os
import pathlib
import re
import subprocess
import sys

SCRIPT = pathlib.Path(__file__).parent / "two_tower.py"


def test_the_loss_falls_on_eight_devices(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--steps", "40", "--batch", "256", "--log-every", "13"],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = [float(v) for v in re.findall(r"loss (\d+\.\d+)", proc.stdout)]
    assert proc.stdout.startswith("8 devices, 256 pairs")
    assert len(losses) == 4  # steps 0, 13, 26 and 39
    assert losses[-1] < losses[0] - 3.0 and losses[-1] < losses[1]
    top1 = float(re.search(r"held-out top-1 among 256: (\d\.\d+)", proc.stdout)[1])
    assert top1 > 0.5, proc.stdout
