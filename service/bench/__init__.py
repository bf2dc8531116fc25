"""Benchmarks of the service against its raw engine (``deltagate bench``).

- :mod:`service.bench.engine`: the service's engine classes in-process, images/s per batch size.
- :mod:`service.bench.http`: the real server in a subprocess and a closed-loop HTTP load.
- :mod:`service.bench.runs`: the two reports (engine; service with engine passes around it).
"""

from service.bench.http import synthetic_png
from service.bench.report import format_table
from service.bench.runs import TARGETS, engine_report, service_report, write_report

__all__ = ["TARGETS", "engine_report", "service_report", "write_report", "synthetic_png", "format_table"]
