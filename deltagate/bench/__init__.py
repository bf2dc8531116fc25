"""Benchmarks of the service against its raw engine (``deltagate bench``).

- :mod:`deltagate.bench.engine`: the service's engine classes in-process, images/s per batch size.
- :mod:`deltagate.bench.http`: a closed-loop HTTP load against a server in a subprocess
  (:mod:`deltagate.server_process`).
- :mod:`deltagate.bench.runs`: the two reports (engine; service with engine passes around it).
"""

from deltagate.bench.http import synthetic_png
from deltagate.bench.report import format_table
from deltagate.bench.runs import TARGETS, engine_report, service_report, write_report

__all__ = ["TARGETS", "engine_report", "service_report", "write_report", "synthetic_png", "format_table"]
