"""The layout docs/ARCHITECTURE.md describes: the commands at the top, the library in stages that import only
downwards, files that hold one story, and a product that speaks of what it is, not of how it was made."""

import ast
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "breastmri"
COMMANDS = {"preprocessing.py", "main.py", "model.py", "data_factory.py", "enhance.py", "benchmark.py",
            "demo_data.py"}
# Stages from the bottom up: a module may import its own stage and the stages before it, never one after it.
STAGES = ("base", "dicom", "simulate", "data", "restore", "enhance", "evaluate", "studies")
MAX_LINES = 560  # "about 500": one story per file


def _modules():
    """{dotted name: path} of the package and the top-level commands."""
    found = {p.stem: p for p in ROOT.glob("*.py")}
    for path in (ROOT / PACKAGE).rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(path, known):
    """Our modules that `path` imports, anywhere in it (module level or inside a function)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names]
            out |= {n for n in [node.module, *names] if n in known}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in known}
    return out


def _stage(module):
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return "command"
    return parts[1] if len(parts) > 2 else "base"


def test_the_top_holds_only_the_commands():
    assert {p.name for p in ROOT.glob("*.py")} == COMMANDS


def test_no_module_imports_one_that_imports_it_back():
    known = _modules()
    graph = {name: _imports(path, known) - {name} for name, path in known.items()}
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for dep in graph[node]:
            if state.get(dep) == "open":
                pytest.fail(f"import cycle: {' -> '.join(stack[stack.index(dep):] + [dep])}")
            if dep not in state:
                visit(dep, stack + [dep])
        state[node] = "done"

    for name in graph:
        if name not in state:
            visit(name, [name])


def test_stages_import_only_downwards_and_never_the_commands():
    known = _modules()
    for name, path in known.items():
        if _stage(name) == "command":
            continue
        for dep in _imports(path, known):
            if dep in (PACKAGE, f"{PACKAGE}.{_stage(dep)}"):
                continue  # a package's own (empty) __init__
            assert _stage(dep) != "command", f"{name} imports the command {dep}"
            assert STAGES.index(_stage(dep)) <= STAGES.index(_stage(name)), f"{name} imports {dep}, a later stage"


def test_every_source_file_is_one_story():
    long = {str(p.relative_to(ROOT)): n for p in [*ROOT.glob("*.py"), *(ROOT / PACKAGE).rglob("*.py")]
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines: {long}"


def test_readme_is_a_front_door():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300
    assert len((ROOT / "docs" / "ARCHITECTURE.md").read_text().splitlines()) <= 120


def test_no_words_of_how_the_work_was_organised():
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    pattern = re.compile(r"\b(this|last|next) stop\b|\bstop [0-9]+|\bthis session\b|_this_session|\bissue #?[0-9]+",
                         re.IGNORECASE)
    this_file = Path(__file__).relative_to(ROOT).as_posix()
    hits = []
    for name in listed.stdout.split():
        path = ROOT / name
        if name == this_file or path.suffix not in {".py", ".md", ".yaml", ".ipynb", ".txt", ""} or not path.is_file():
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if pattern.search(line) and "best_value_this_session" not in line:  # the legacy key ablation still reads
                hits.append(f"{name}:{number}: {line.strip()[:100]}")
    assert not hits, "\n".join(hits)
