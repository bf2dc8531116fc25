"""The command line a report records: rebuilt from what the CLI parsed, not from ``sys.argv``.

``sys.argv`` is the process's arguments: under a test runner (``CliRunner`` inside pytest) or any
in-process call they are the runner's, not the command's; a bare ``pytest`` has none at all.
Rebuilding from the parsed parameters records the command that actually ran, with every value that
did not come from a default (options given on the command line or in the environment).
"""

from __future__ import annotations

import shlex
from typing import Any

import typer

__all__ = ["command_line"]

_DEFAULT_SOURCES = {"DEFAULT", "DEFAULT_MAP"}  # click's ParameterSource names of values nobody gave


def _option_words(param: Any, value: object) -> list[str]:
    flag = max(param.opts, key=len)  # the long form
    if param.is_flag:
        if value:
            return [flag]
        return [max(param.secondary_opts, key=len)] if param.secondary_opts else []
    values = value if param.multiple and isinstance(value, list | tuple) else [value]
    return [w for v in values for w in (flag, str(v))]


def command_line(ctx: typer.Context) -> str:
    """``deltagate <sub-commands> <options>`` of the running command, shell-quoted.

    Args:
        ctx: the command's context (declare a ``ctx: typer.Context`` parameter to get it).

    Returns:
        The command, options in the order the command declares them; defaults left out.
    """
    chain = []
    c: Any = ctx
    while c is not None:
        chain.append(c)
        c = c.parent
    words: list[str] = []
    for i, c in enumerate(reversed(chain)):
        if i > 0:
            words.append(str(c.info_name))
        for param in c.command.params:
            name = param.name
            source = c.get_parameter_source(name) if name in c.params else None
            if source is None or source.name in _DEFAULT_SOURCES:
                continue
            value = c.params[name]
            if param.param_type_name == "option":
                words += _option_words(param, value)
            elif value is not None:
                words += [str(v) for v in value] if isinstance(value, list | tuple) else [str(value)]
    return shlex.join(["deltagate", *words])
