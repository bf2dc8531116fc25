"""deltagate: the command-line entry point that ties ``models`` and ``service`` together."""

__version__ = "0.1.0"
