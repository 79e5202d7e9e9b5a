"""Every Python block in README.md and docs/ runs, and the docs site builds strictly."""

import pathlib
import re
import shutil
import subprocess
import sys

import pytest

import jaxloss

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(path):
    return BLOCK.findall(path.read_text())


@pytest.mark.exhaustive
@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_python_blocks_run(page):
    blocks = python_blocks(page)
    namespace = {"__name__": f"docs_{page.stem}"}
    for block in blocks:
        exec(compile(block, str(page), "exec"), namespace)  # noqa: S102


@pytest.mark.exhaustive
def test_sharding_page_runs_on_a_device_count_that_divides_nothing_in_it():
    """docs/sharding.md's blocks on 3 host CPU devices (a subprocess: the device count is
    fixed when JAX starts)."""
    script = (
        "import os, pathlib, re\n"
        "os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=3'\n"
        "os.environ['JAX_PLATFORMS'] = 'cpu'\n"
        "import jax\n"
        "assert jax.device_count() == 3\n"
        f"page = pathlib.Path({str(ROOT / 'docs' / 'sharding.md')!r}).read_text()\n"
        f"for block in re.findall({BLOCK.pattern!r}, page, re.S | re.M):\n"
        "    exec(compile(block, 'sharding.md', 'exec'), {'__name__': 'docs_sharding'})\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_readme_has_exactly_two_setup_commands():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^```bash\n(.*?)^```", readme, re.S | re.M)
    assert len(commands) == 2
    assert "pytest" in commands[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1].strip().split("&& ", 1)[1] in ci
    # The README's command runs the quick tier; CI runs the exhaustive tier after it.
    assert "--tier" not in commands[1] and "\npython -m pytest -n 2 --tier exhaustive\n" in ci


def test_every_public_function_is_in_the_api_reference():
    api = (ROOT / "docs" / "api.md").read_text()
    for name in jaxloss.__all__:
        assert f"::: jaxloss.{name}\n" in api, name


@pytest.mark.skipif(
    shutil.which("mkdocs") is None
    and not (pathlib.Path(sys.executable).parent / "mkdocs").exists(),
    reason="docs extra not installed",
)
def test_docs_site_builds_strictly(tmp_path):
    mkdocs = shutil.which("mkdocs") or str(pathlib.Path(sys.executable).parent / "mkdocs")
    result = subprocess.run(
        [mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    api_page = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "Gradient (the custom JVP rule" in api_page


def _names_in_the_code() -> set[str]:
    """Every module, and every name defined, assigned, passed or quoted, in the package,
    the benchmarks, the tests and the examples."""
    import ast

    names = set()
    for folder in ("jaxloss/**", "benchmarks", "tests", "examples/**"):
        for path in ROOT.glob(f"{folder}/*.py"):
            names.add(path.stem)
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                    names.add(node.name)
                elif isinstance(node, ast.Name):
                    names.add(node.id)
                elif isinstance(node, ast.Attribute):
                    names.add(node.attr)
                elif isinstance(node, (ast.arg, ast.keyword)) and node.arg:
                    names.add(node.arg)
                elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                    names.update(re.findall(r"\w+", node.value))
    return names


def test_the_architecture_page_describes_the_package_as_it_is():
    """docs/architecture.md counts the public functions, lists every module of the
    package and of benchmarks/, names only files that exist, and every code name it
    quotes (``engine.forward_pass``, ``Config.passes``, ``token_codes``) is in the code."""
    page = (ROOT / "docs" / "architecture.md").read_text()
    words = ["thirty", "thirty-one", "thirty-two", "thirty-three", "thirty-four", "thirty-five"]
    count = words[len(jaxloss.__all__) - 30]
    assert f"jaxloss is {count} public functions" in page
    quoted = set(re.findall(r"`([^`\s]+)`", page))
    modules = {p.relative_to(ROOT / "jaxloss").as_posix() for p in ROOT.glob("jaxloss/**/_*.py")}
    modules -= {"__init__.py", "_fused/__init__.py"}
    assert modules <= quoted, sorted(modules - quoted)
    suites = {p.name for p in ROOT.glob("benchmarks/*.py")} - {"__init__.py", "__main__.py"}
    assert suites <= quoted, sorted(suites - quoted)
    for name in (q for q in quoted if q.endswith(".py")):
        if name.startswith(("tests/", "benchmarks/")):
            assert (ROOT / name).is_file() or "<" in name, name
        elif "/" in name and not name.startswith("_"):
            assert (ROOT / name).is_file(), name
    code = _names_in_the_code()
    for text in (q for q in quoted if not q.endswith(".py")):
        if re.fullmatch(
            r"[A-Za-z_][\w]*(\.[A-Za-z_]\w*)+|_?[a-z]+_[a-z_]+|[A-Z][a-z]+[A-Z]\w*", text
        ):
            for part in text.split("."):
                assert part in code, (text, part)
