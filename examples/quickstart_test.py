"""The quickstart prints every worked example and passes; a wrong expected value fails it."""

import json

import quickstart


def test_quickstart_prints_every_worked_example_and_passes(capsys):
    assert quickstart.run(quickstart.DEFAULT_CASES) == 0
    out = capsys.readouterr().out
    cases = json.loads(quickstart.DEFAULT_CASES.read_text())["cases"]
    assert out.strip().splitlines()[-1].startswith(f"{len(cases)} worked examples")
    assert out.strip().endswith(": OK")
    assert out.count("by hand:") == sum(
        c.get("kwargs", {}).get("reduction", "mean") == "mean" and "loss" in c for c in cases
    )


def test_quickstart_fails_on_a_wrong_expected_loss(tmp_path, capsys):
    data = json.loads(quickstart.DEFAULT_CASES.read_text())
    case = next(c for c in data["cases"] if "loss" in c)
    case["loss"] = case["loss"] + 1.0 if isinstance(case["loss"], float) else case["loss"]
    if not isinstance(case["loss"], float):
        case["loss"] = [v + 1.0 for v in case["loss"]]
    path = tmp_path / "cases.json"
    path.write_text(json.dumps(data))
    assert quickstart.run(path) == 1
    assert capsys.readouterr().out.strip().endswith(": FAIL")
