"""Imports go one way: models -> service / proxy -> deltagate (the command line, the top).

Checked on the source: every ``import`` statement of every module, at module level or inside a
function, so a lazy import cannot hide an upward one. A module may import, of this project:

- ``models`` (the light model side the service imports): ``models`` only, never ``models.train``;
- ``models.train`` (the product's offline module): ``models``;
- ``service``: ``service`` and the light ``models`` (never ``models.train``; at run time
  ``tests/integration/service/test_no_training_imports.py`` checks the same);
- ``proxy`` (the proxy research: synthetic world, tiny CLIP, evidence): ``proxy`` and ``models``,
  never ``service`` (the research needs no server) nor ``deltagate``;
- ``deltagate``: anything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PROJECT = ("models", "service", "proxy", "deltagate")

# (importer prefix, allowed prefixes, forbidden prefixes); the most specific importer prefix applies.
RULES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "models": (("models",), ("models.train",)),
    "models.train": (("models",), ()),
    "service": (("service", "models"), ("models.train",)),
    "proxy": (("proxy", "models"), ()),
    "deltagate": (PROJECT, ()),
}


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool) -> list[str]:
    """Every module a source imports (relative imports resolved against ``module``)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # from . import x / from ..y import z
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(p for p in (*package, base) if p)
            out += [f"{base}.{alias.name}" if not node.module else base for alias in node.names]
    return out


def violations(module: str, imports: list[str]) -> list[str]:
    """The imports of ``module`` that break :data:`RULES` (empty for modules outside the project)."""
    rule = max((p for p in RULES if _within(module, p)), key=len, default=None)
    if rule is None:
        return []
    allowed, forbidden = RULES[rule]
    bad = []
    for name in imports:
        if not any(_within(name, p) for p in PROJECT):
            continue  # a third-party or standard-library module
        if not any(_within(name, p) for p in allowed) or any(_within(name, p) for p in forbidden):
            bad.append(f"{module} imports {name}")
    return bad


def test_no_import_goes_up() -> None:
    bad = []
    for top in PROJECT:
        for path in sorted((ROOT / top).rglob("*.py")):
            module = module_name(path)
            imports = imported_modules(path.read_text(encoding="utf-8"), module, path.name == "__init__.py")
            bad += violations(module, imports)
    assert not bad, "imports against the layering (module docstring):\n" + "\n".join(bad)


@pytest.mark.parametrize(("module", "source", "expected"), [
    ("models.bundle", "def f():\n    from models.train.export import export_bundle\n",
     ["models.bundle imports models.train.export"]),
    ("models.train.export", "import proxy.world.synth\n", ["models.train.export imports proxy.world.synth"]),
    ("service.app", "from proxy import demo\n", ["service.app imports proxy"]),
    ("service.app", "from models.train import quantize\n", ["service.app imports models.train"]),
    ("proxy.demo", "from service.app import create_app\n", ["proxy.demo imports service.app"]),
    ("proxy.world.splits", "from .synth import load_world\n", []),
    ("models.train.data.folders", "from ...scores import energy\n", []),
    ("models.scores", "from .train import losses\n", ["models.scores imports models.train"]),
    ("deltagate.cli", "import proxy.demo\nimport service.app\n", []),
])
def test_the_checker_catches_an_upward_import(module: str, source: str, expected: list[str]) -> None:
    assert violations(module, imported_modules(source, module, is_package=False)) == expected
