"""deltagate: the command-line entry point that ties ``models`` and ``service`` together."""

from models.version import DELTAGATE_VERSION as __version__

__all__ = ["__version__"]
