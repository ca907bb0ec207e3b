"""The package's shape, checked: layers import only downwards, no module reads another's private
names, only dchml.ops calls the compiled operators, files stay readable in size, and nothing
refers to files outside the repository."""
from __future__ import annotations

import ast
import pathlib
import re
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dchml"

# Lowest first: a module may import its own layer and the ones before it, never a later one.
LAYERS = ("io", "ops", "retrieval", "losses", "data", "method", "distributed", "app")
MAX_PYTHON_LINES = 500
MAX_NATIVE_LINES = 600


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(("dchml",) + (parts[:-1] if parts[-1] == "__init__" else parts))
        yield path, name, parts[-1] == "__init__", ast.parse(path.read_text(), filename=str(path))


def _imports(name: str, is_package: bool, tree):
    """(imported module, imported names, line) of every dchml import, lazy ones included."""
    base = name.split(".") if is_package else name.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                target = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "dchml" or target.startswith("dchml."):
                yield target, [a.name for a in node.names], node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("dchml"):
                    yield alias.name, [], node.lineno


def _layer(module: str):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def test_every_module_lives_in_a_layer_package():
    loose = [name for _, name, _, _ in _modules() if _layer(name) is None and name not in ("dchml", "dchml.__main__")]
    assert loose == [], f"modules outside the layer packages {LAYERS}: {loose}"


def test_layers_import_only_downwards():
    wrong = []
    for path, name, is_package, tree in _modules():
        mine = _layer(name)
        if mine is None:
            continue  # the package's front door and __main__ may import anything
        for target, names, line in _imports(name, is_package, tree):
            theirs = _layer(target) if target != "dchml" else None
            if target == "dchml" and names and all(n in LAYERS for n in names):
                theirs = max(names, key=LAYERS.index)
            if theirs is None:
                if mine != "app":  # only the applications use the public front door `dchml`
                    wrong.append(f"{path.relative_to(ROOT)}:{line} imports the top-level package")
            elif LAYERS.index(theirs) > LAYERS.index(mine):
                wrong.append(f"{path.relative_to(ROOT)}:{line} ({mine}) imports {target} ({theirs})")
    assert wrong == [], "imports against the layer order:\n" + "\n".join(wrong)


def test_no_module_reads_another_modules_private_names():
    reads = []
    for path, name, is_package, tree in _modules():
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                targets = list(_imports(name, is_package, ast.Module(body=[node], type_ignores=[])))
                if not targets:
                    continue
                for alias in node.names:
                    private = alias.name.startswith("_") and not alias.name.startswith("__")
                    # the compiled extension is dchml.ops' own, loaded by dchml.ops.library
                    if private and not (alias.name == "_kernels" and name == "dchml.ops.library"):
                        reads.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {alias.name}")
                    aliases[alias.asname or alias.name] = True
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("dchml"):
                        aliases[(alias.asname or alias.name).split(".")[0]] = True
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                reads.append(f"{path.relative_to(ROOT)}:{node.lineno} reads {node.value.id}.{node.attr}")
    assert reads == [], "private names read across modules:\n" + "\n".join(reads)


def test_only_dchml_ops_calls_the_compiled_operators():
    callers = sorted(str(path.relative_to(ROOT)) for path, name, _, _ in _modules()
                     if _layer(name) != "ops" and re.search(r"torch\.ops\.dchml\.\w", path.read_text()))
    assert callers == [], f"modules calling torch.ops.dchml directly instead of through dchml.ops: {callers}"


def _tracked(*patterns):
    try:
        out = subprocess.run(["git", "ls-files", "--", *patterns], cwd=ROOT, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / line for line in out.stdout.splitlines() if (ROOT / line).is_file()]


def test_files_stay_readable_in_size():
    too_long = [f"{p.relative_to(ROOT)}: {n} lines" for p in _tracked("dchml/*.py")
                if (n := len(p.read_text().splitlines())) > MAX_PYTHON_LINES]
    too_long += [f"{p.relative_to(ROOT)}: {n} lines" for p in _tracked("csrc/*")
                 if (n := len(p.read_text().splitlines())) > MAX_NATIVE_LINES]
    assert too_long == [], f"over {MAX_PYTHON_LINES} (Python) / {MAX_NATIVE_LINES} (csrc) lines: {too_long}"


def test_nothing_refers_outside_the_repository():
    outside = re.compile(r"\.\./shared|METHOD\.md")
    hits = [f"{p.relative_to(ROOT)}" for p in _tracked("*.py", "*.md", "*.sh", "*.h", "*.cpp", "*.cu", "*.toml", "*.txt")
            if not p.is_relative_to(ROOT / "benchmarks" / "results") and outside.search(p.read_text(errors="replace"))]
    assert hits == [], f"references to files outside the repository (the spec is docs/spec.md): {hits}"
