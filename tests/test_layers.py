"""The folder tree is the architecture (docs/architecture.md): each package of ``rsst`` is a layer, and every
import, at module level or inside a function, points to a lower layer."""

from __future__ import annotations

import ast
from pathlib import Path

from helpers import ROOT

# docs/architecture.md, "The layers", from the top: a package may import only packages of a lower rank.
RANKS = {
    "export": 7, "report": 7,  # the -m shims: the user-facing names of the commands' functions
    "__init__": 6, "commands": 6,  # the commands (rsst/__init__.py exposes rsst.run)
    "loop": 5, "search": 5,  # the round loop; the hyperparameter search (its trials are runs, launched by Hydra)
    "data": 4, "models": 4, "pruning": 4, "tracking": 4, "runtime": 4,  # what the loop is built from
    "config": 3, "parallel": 3,  # the config schema and checks; processes and collectives
    "folder": 2,  # the run folder
    "errors": 1, "seeds": 1,  # leaves
}  # fmt: skip


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, rsst package) of every ``rsst.<package>`` import in ``path``, nested imports included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        found += [(node.lineno, n.split(".")[1]) for n in names if n.startswith("rsst.") and n.count(".") >= 1]
    return found


def test_every_package_of_rsst_has_a_layer():
    here = ROOT / "rsst"
    folders = {p.name for p in here.iterdir() if p.is_dir() and p.name not in ("__pycache__", "conf")}
    packages = folders | {p.stem for p in here.glob("*.py")}
    assert len(packages) >= 15
    missing = sorted(packages - set(RANKS))
    assert not missing, f"rsst packages without a layer in tests/test_layers.py (and docs/architecture.md): {missing}"


def test_every_import_points_to_a_lower_layer():
    wrong = []
    for path in sorted((ROOT / "rsst").rglob("*.py")):
        parts = path.relative_to(ROOT / "rsst").parts
        layer = parts[0].removesuffix(".py")
        for line, target in imports_of(path):
            if target != layer and RANKS.get(target, 0) >= RANKS[layer]:
                wrong.append(f"{path.relative_to(ROOT)}:{line} ({layer}) imports rsst.{target}")
    assert not wrong, "imports that do not point down:\n" + "\n".join(wrong)
