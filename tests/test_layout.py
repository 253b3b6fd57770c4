"""The package's dependencies point one way: cli -> training/evaluation -> models -> nn, with data
apart (the models never import the data, the data never the models) and the leaf utilities
(config, files, paths) importing nothing of genzoo's but each other."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "genzoo"

#: what each part may import from genzoo (its own modules always)
ALLOWED = {
    "paths": set(),
    "files": set(),
    "config": set(),
    "nn": set(),
    "kernels": {"paths"},
    "data": {"config", "files", "paths"},
    "models": {"config", "nn", "kernels", "models"},
    "sampling": {"models"},
}


def _part(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0].removesuffix(".py")


def _genzoo_imports(path: Path) -> set[str]:
    """The genzoo parts a module imports (at any depth in the file, function bodies included)."""
    parts = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            pieces = name.split(".")
            if pieces[0] == "genzoo" and len(pieces) > 1:
                parts.add(pieces[1])
    return parts


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if _part(p) in ALLOWED)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_each_part_imports_only_what_lies_below_it(path):
    part = _part(path)
    wrong = _genzoo_imports(path) - ALLOWED[part] - {part}
    assert not wrong, f"{path.relative_to(PACKAGE)} ({part}) imports genzoo.{', genzoo.'.join(sorted(wrong))}"


def test_the_check_can_fail():
    assert _genzoo_imports(PACKAGE / "kernels" / "__init__.py") == {"paths"}
    assert "config" in _genzoo_imports(PACKAGE / "models" / "base.py")
