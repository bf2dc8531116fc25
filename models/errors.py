"""User-facing errors of the model side, importable without torch (the CLI catches them)."""

from __future__ import annotations

__all__ = [
    "DeltagateError",
    "BundleError",
    "DataError",
    "ResumeConflictError",
    "PretrainedUnavailableError",
    "UnknownModelError",
    "OPTIONAL_MODULES",
    "RESEARCH",
    "missing_module_message",
]

RESEARCH = "research"  # not an extra: proxy/, the research code, which the service images leave out

# The project's optional parts, by the module a missing install shows up as (ImportError.name): each
# the pyproject.toml extra that installs it (tests/unit/test_packaging.py checks them against
# pyproject.toml and the installed distributions), or the research package.
OPTIONAL_MODULES: dict[str, str] = {
    **dict.fromkeys(("torch", "torchvision", "open_clip", "safetensors"), "torch"),
    **dict.fromkeys(("sklearn", "matplotlib", "scipy", "onnx", "onnxscript", "tqdm"), "train"),
    "locust": "loadtest",
    "litserve": "bench",
    "proxy": RESEARCH,
}


def missing_module_message(module: str | None, needed_by: str) -> str | None:
    """One line saying what installs ``module`` (a missing import of ``needed_by``), or None when it is
    not one of the project's optional parts (then it is a bug, and its traceback is worth seeing).

    Both places that meet a missing optional part use it: the engine registry
    (:func:`service.engines.engine_class`) and the command line (:func:`deltagate.cli.cli_main`).
    """
    top = (module or "").partition(".")[0]
    part = OPTIONAL_MODULES.get(top)
    if part is None:
        return None
    if part == RESEARCH:
        return (f"{needed_by} needs the research package 'proxy' (synthetic world, tiny CLIP, evidence), which "
                "this install lacks: the service images carry the service and its CLI, not the research code; "
                "run it from a checkout of the project (pip install -e '.[train]')")
    also = "; the offline commands need 'deltagate[train]', which includes it" if part == "torch" else ""
    install = f"the '{part}' extra: pip install 'deltagate[{part}]'{also}"
    return f"{needed_by} needs {top}, which is not installed ({install})"


class DeltagateError(Exception):
    """Base of the errors a user can fix; the CLI prints their message without a traceback."""


class BundleError(DeltagateError, RuntimeError):
    """A bundle is missing, corrupt or of an unsupported schema; the message names the file."""


class DataError(DeltagateError, ValueError):
    """A data directory lacks what a command needs (a split, images in a class folder, matching classes);
    the message names the folder."""


class ResumeConflictError(DeltagateError, ValueError):
    """A run directory holds a checkpoint of another configuration; the message names the fields that
    differ and the flag that starts over."""


class PretrainedUnavailableError(DeltagateError, RuntimeError):
    """Pretrained weights are neither cached locally nor downloadable."""


class UnknownModelError(DeltagateError, KeyError):
    """Unknown architecture name or pretrained tag."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0]) if self.args else ""
