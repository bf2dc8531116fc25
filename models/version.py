"""deltagate's own version: ``pyproject.toml`` is its one definition, read here from the installed
package's metadata (so the CLI's ``--version``, the OpenAPI document and the bundles it writes agree)."""

from __future__ import annotations

from importlib import metadata

__all__ = ["package_version", "DELTAGATE_VERSION"]


def package_version(package: str) -> str | None:
    """The installed version of ``package``, or None when it is not installed."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


# A checkout run from PYTHONPATH without `pip install` has no metadata: say so rather than guess.
DELTAGATE_VERSION = package_version("deltagate") or "0+unknown"
