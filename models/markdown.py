"""The one Markdown table writer (tabulate's GitHub format), for every report, doc and table the
project prints: evaluation, evidence, faithfulness, benchmarks, cold start and the settings reference."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tabulate import tabulate

__all__ = ["markdown_table"]


def markdown_table(headers: Sequence[Any], rows: Sequence[Sequence[Any]], *, parse_numbers: bool = False) -> str:
    """A GitHub-flavoured Markdown table.

    Args:
        headers: column titles.
        rows: cells; by default written as given (format numbers before).
        parse_numbers: let tabulate recognise numeric cells (right-aligned, floats in its own
            format), as the faithfulness tables were first written.
    """
    return str(tabulate([list(r) for r in rows], headers=list(headers), tablefmt="github",
                        disable_numparse=not parse_numbers))
