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

And the torch-free path (what ONNX serving loads: ``service`` and the light ``models``, except the
modules of :data:`TORCH_SIDE`) imports, at import time (module level, ``TYPE_CHECKING`` blocks
aside), neither torch nor open_clip nor a module of :data:`TORCH_SIDE`: those load only inside the
function that builds a torch model. At run time ``test_no_training_imports.py`` checks that serving
on ONNX leaves torch and open_clip out of ``sys.modules``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
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


# The project's modules that build or run torch models; only they may import torch at import time.
TORCH_SIDE = (
    "models.clip_loading",  # open_clip models, and a bundle's vision tower (open_clip's private builder)
    "models.scoring_module",  # the torch scoring module and its loading from a bundle
    "models.scores",
    "models.prompt_learner",
    "service.engines.torch_engine",
    "service.cuda_graphs",
    "service.device_input",
)
TORCH_PACKAGES = ("torch", "torchvision", "open_clip", "safetensors.torch")


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool) -> list[str]:
    """Every module a source imports (relative imports resolved against ``module``)."""
    return _names(ast.walk(ast.parse(source)), module, is_package)


def _run_at_import(body: list[ast.stmt]) -> list[ast.stmt]:
    """The statements of a module body that run when it is imported: not function bodies, not the
    ``if TYPE_CHECKING:`` branch (its ``else`` does run)."""
    out: list[ast.stmt] = []
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        out.append(node)
        if isinstance(node, ast.If):
            checking = "TYPE_CHECKING" in ast.unparse(node.test)
            out += _run_at_import(node.orelse) + ([] if checking else _run_at_import(node.body))
        elif isinstance(node, ast.Try):
            out += _run_at_import([*node.body, *node.orelse, *node.finalbody, *(s for h in node.handlers
                                                                                for s in h.body)])
        elif isinstance(node, ast.With | ast.ClassDef):
            out += _run_at_import(node.body)
    return out


def import_time_modules(source: str, module: str, is_package: bool) -> list[str]:
    """The modules a source imports when it is itself imported (lazy imports inside functions aside)."""
    return _names(_run_at_import(ast.parse(source).body), module, is_package)


def _names(nodes: Iterable[ast.AST], module: str, is_package: bool) -> list[str]:
    out = []
    for node in nodes:
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


def torch_at_import(module: str, imports: list[str]) -> list[str]:
    """The import-time imports of ``module`` that load torch when it is on the torch-free path."""
    on_path = (_within(module, "service") or _within(module, "models")) and not _within(module, "models.train")
    if not on_path or any(_within(module, t) for t in TORCH_SIDE):
        return []
    return [f"{module} imports {name} at import time" for name in imports
            if any(_within(name, t) for t in (*TORCH_PACKAGES, *TORCH_SIDE))]


def test_no_import_goes_up() -> None:
    bad = []
    for top in PROJECT:
        for path in sorted((ROOT / top).rglob("*.py")):
            module = module_name(path)
            imports = imported_modules(path.read_text(encoding="utf-8"), module, path.name == "__init__.py")
            bad += violations(module, imports)
    assert not bad, "imports against the layering (module docstring):\n" + "\n".join(bad)


def test_the_torch_free_path_imports_no_torch_at_import_time() -> None:
    bad = []
    for top in ("models", "service"):
        for path in sorted((ROOT / top).rglob("*.py")):
            module = module_name(path)
            bad += torch_at_import(module, import_time_modules(path.read_text(encoding="utf-8"), module,
                                                               path.name == "__init__.py"))
    assert not bad, "torch loaded on the torch-free path (module docstring):\n" + "\n".join(bad)


def test_the_bundle_format_module_builds_no_model() -> None:
    """``models.bundle`` is the format (manifest, files, hashes): not even a lazy import of a model builder."""
    path = ROOT / "models" / "bundle.py"
    imports = imported_modules(path.read_text(encoding="utf-8"), "models.bundle", is_package=False)
    builders = ("torch", "torchvision", "open_clip", "models.clip_loading")
    assert not [name for name in imports if any(_within(name, b) for b in builders)]


@pytest.mark.parametrize(("module", "source", "expected"), [
    ("models.bundle", "from models.clip_loading import build_vision_tower\n",
     ["models.bundle imports models.clip_loading at import time"]),
    ("models.bundle", "import open_clip.model\n", ["models.bundle imports open_clip.model at import time"]),
    ("service.runtime", "try:\n    import torch\nexcept ImportError:\n    torch = None\n",
     ["service.runtime imports torch at import time"]),
    ("service.app", "class A:\n    from service.engines.torch_engine import TorchEngine\n",
     ["service.app imports service.engines.torch_engine at import time"]),
    ("models.bundle", "def build():\n    from models.clip_loading import build_vision_tower\n", []),
    ("models.bundle", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import torch\n", []),
    ("models.bundle", "if TYPE_CHECKING:\n    pass\nelse:\n    import torch\n",
     ["models.bundle imports torch at import time"]),
    ("models.scoring_module", "import torch\n", []),  # on the torch side
    ("models.train.export", "import torch\n", []),  # offline, not on the serving path
])
def test_the_checker_catches_torch_at_import_time(module: str, source: str, expected: list[str]) -> None:
    assert torch_at_import(module, import_time_modules(source, module, is_package=False)) == expected


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
