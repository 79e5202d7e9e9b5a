"""The repository stands alone: no tracked file refers to a path outside it."""

import pathlib
import re
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TEXT_SUFFIXES = {".py", ".md", ".toml", ".yml", ".yaml", ".json", ".txt", ".cfg", ".ini", ""}

RELATIVE = re.compile(r"(?<![\w/:.])((?:\.\./)+[\w.\-]*(?:/[\w.\-]+)*)")
PARENTS = re.compile(r"\.parents\[(\d+)\]((?:\.parent\b)*)")
FILE_PARENT = re.compile(r"__file__\)(?:\.resolve\(\))?((?:\.parent\b)+)")
THIS = "tests/test_repository.py"  # the checker: its examples of what it finds are not uses
MACHINE_PATHS = re.compile(r"(?<![\w.])/(?:work|shared|home|root|opt|mnt)/")


def outside_references(relpath: str, text: str) -> list[str]:
    """The references in ``text`` (the file at ``relpath`` in the repository) to paths
    outside the repository: ``../`` paths that climb above the root from the file's
    folder, ``Path(__file__)`` parents above the root, and absolute paths of a machine."""
    folder = (ROOT / relpath).parent
    depth = len(pathlib.PurePosixPath(relpath).parts) - 1  # folders between the root and it
    found = []
    # A link in a page is relative to the page's folder; a path in code may be relative
    # to its file's folder or to the working directory (the root): both must stay inside.
    bases = [folder] if relpath.endswith(".md") else [folder, ROOT]
    for match in RELATIVE.finditer(text):
        if any(not (base / match.group(1)).resolve().is_relative_to(ROOT) for base in bases):
            found.append(match.group(0))
    for match in PARENTS.finditer(text):
        level = int(match.group(1)) + match.group(2).count(".parent")
        if level > depth:
            found.append(match.group(0))
    for match in FILE_PARENT.finditer(text):
        if match.group(1).count(".parent") - 1 > depth:
            found.append(match.group(0))
    found += [m.group(0) for m in MACHINE_PATHS.finditer(text)]
    return found


def tracked_files() -> list[str]:
    if shutil.which("git") and (ROOT / ".git").exists():
        out = subprocess.run(
            ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
        return out.split()
    skip = {".git", ".venv", "site", "runs", "data", "__pycache__"}
    return [
        str(p.relative_to(ROOT))
        for p in ROOT.rglob("*")
        if p.is_file() and not skip & set(p.relative_to(ROOT).parts)
    ]


@pytest.mark.parametrize(
    "relpath, text",
    [
        ("tests/conftest.py", 'SHARED = ROOT / "../shared/cases/seed_examples.json"'),
        ("examples/quickstart.py", 'pathlib.Path(__file__).resolve().parents[1].parent / "x"'),
        ("tests/conftest.py", "pathlib.Path(__file__).resolve().parents[2]"),
        ("tests/conftest.py", "pathlib.Path(__file__).parent.parent.parent"),
        ("docs/index.md", "see [the cases](../../shared/cases/seed_examples.json)"),
        ("README.md", "data lives in /work/shared/cases"),
    ],
)
def test_the_check_finds_references_outside(relpath, text):
    assert outside_references(relpath, text)


@pytest.mark.parametrize(
    "relpath, text",
    [
        ("docs/index.md", "[README](../README.md) and [api](api.md)"),
        ("tests/conftest.py", "ROOT = pathlib.Path(__file__).resolve().parents[1]"),
        ("tests/conftest.py", "pathlib.Path(__file__).parent.parent / 'docs'"),
        ("benchmarks/rss_probe.py", 'open("/proc/self/statm")  # https://example.org/a/../b'),
    ],
)
def test_the_check_accepts_references_inside(relpath, text):
    assert outside_references(relpath, text) == []


def test_no_tracked_file_refers_outside_the_repository():
    offenders = {}
    for relpath in tracked_files():
        path = ROOT / relpath
        if relpath == THIS or path.suffix not in TEXT_SUFFIXES or not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        found = outside_references(relpath, text)
        if found:
            offenders[relpath] = found
    assert offenders == {}


def test_project_text_speaks_of_the_project_alone():
    """README, docs, examples and comments say what was measured and what was not,
    never who was lent a machine or which task asked for it."""
    banned = re.compile(r"\b(sessions?|lent|lend|the issue|the brief|device tool)\b", re.I)
    offenders = {}
    for relpath in tracked_files():
        if not relpath.endswith((".md", ".py")) or relpath == THIS:
            continue
        hits = banned.findall((ROOT / relpath).read_text())
        if hits:
            offenders[relpath] = sorted(set(hits))
    assert offenders == {}


def test_the_installed_package_is_the_library_alone():
    """What pyproject.toml installs: jaxloss and its private subpackages, with py.typed;
    the benchmarks, tests and examples stay in the repository."""
    import tomllib
    from setuptools import find_packages

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = find_packages(str(ROOT), include=config["packages"]["find"]["include"])
    assert sorted(packages) == ["jaxloss", "jaxloss._fused"]
    assert config["package-data"] == {"jaxloss": ["py.typed"]}
    assert (ROOT / "jaxloss" / "py.typed").is_file()
    assert (ROOT / "benchmarks" / "__main__.py").is_file()


def _body_lines(node) -> int:
    """Lines of a function's body after its docstring."""
    import ast

    body = node.body
    first = body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
        if isinstance(first.value.value, str):
            body = body[1:]
    return body[-1].end_lineno - body[0].lineno + 1 if body else 0


def test_every_function_of_the_package_and_the_benchmarks_reads_at_once():
    """No function body (after its docstring) in jaxloss/ or benchmarks/ is over 60 lines."""
    import ast

    long = []
    for path in [*ROOT.glob("jaxloss/**/*.py"), *ROOT.glob("benchmarks/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if _body_lines(node) > 60:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert long == []
