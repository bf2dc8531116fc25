"""The served scores' parameters as command-line options, made from their one declaration.

:class:`models.scoring_spec.ScoreParams` declares every score parameter once (name, type, default,
help, grid); :func:`score_options` gives a typer command one ``--<name>`` option per parameter,
with that help and default, and hands the command one validated ``score_params: ScoreParams``. The
flags therefore carry the names the manifest and ``/model`` use (``--delta-energy-temperature`` is
``delta_energy_temperature`` in ``manifest.json``), and a parameter added to the declaration
appears in every command that takes score options.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Annotated, Any, Literal

import typer

from models.scoring_spec import ScoreParams, ScoreParamSpec, score_param_specs

__all__ = ["score_options"]


def _option(spec: ScoreParamSpec, suffix: str) -> inspect.Parameter:
    info = typer.Option(help=f"{spec.help}{suffix}", rich_help_panel="Score parameters (served by the bundle)")
    kind: Any = Literal[spec.choices] if spec.choices else spec.type  # typer offers a Literal's values as choices
    return inspect.Parameter(spec.name, inspect.Parameter.KEYWORD_ONLY, default=spec.default,
                             annotation=Annotated[kind, info])


class _WithScoreOptions:
    """A typer command with one option per score parameter in place of its ``score_params`` argument.

    The signature typer reads is built on first use (when the command line is assembled), not at
    decoration time, so the command's own annotations may name aliases defined later in its module.
    """

    def __init__(self, command: Callable[..., Any], suffix: str) -> None:
        functools.update_wrapper(self, command)
        self._command, self._suffix, self._specs = command, suffix, score_param_specs()

    @functools.cached_property
    def __signature__(self) -> inspect.Signature:
        signature = inspect.signature(self._command, eval_str=True)
        if "score_params" not in signature.parameters:
            raise TypeError(f"{self._command.__name__} takes no score_params parameter")
        kept = [p for p in signature.parameters.values() if p.name != "score_params"]
        return signature.replace(parameters=[*kept, *(_option(s, self._suffix) for s in self._specs)])

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        values = {s.name: kwargs.pop(s.name) for s in self._specs if s.name in kwargs}
        try:
            params = ScoreParams(**values)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
        return self._command(*args, score_params=params, **kwargs)


def score_options(suffix: str = "") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a typer command that takes ``score_params: ScoreParams`` with one option per score parameter.

    Args:
        suffix: appended to every option's help (e.g. " Exported with --bundle.").

    Returns:
        The decorator. The decorated command's signature lists the options in place of ``score_params``;
        invalid values (a temperature <= 0, c < 1) are refused as a bad parameter, in one line.
    """
    return lambda command: _WithScoreOptions(command, suffix)
