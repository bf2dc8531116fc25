"""Print pyproject.toml's core dependencies and those of the named extras, one requirement a line.

The Dockerfiles install these in a layer of their own before they copy the code: a change to the
code then rebuilds only the project's own small layer, while the dependencies (the CUDA image's
are gigabytes) come from the build cache until pyproject.toml changes. Self-references such as
``deltagate[torch]`` are expanded. Standard library only: it runs on the bare base image.

    python pyproject_deps.py pyproject.toml torch gpu > requirements.txt
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    """The core requirements plus each extra's, self-references expanded, in order, without repeats."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    optional = project.get("optional-dependencies", {})
    out: list[str] = []
    seen_extras: set[str] = set()

    def add(reqs: list[str]) -> None:
        for req in reqs:
            own = re.fullmatch(rf"{re.escape(project['name'])}\[([\w,\s-]+)\]", req.strip())
            if own:
                for extra in own.group(1).split(","):
                    add_extra(extra.strip())
            elif req not in out:
                out.append(req)

    def add_extra(extra: str) -> None:
        if extra in seen_extras:
            return
        if extra not in optional:
            raise SystemExit(f"pyproject.toml has no extra {extra!r} (it has {sorted(optional)})")
        seen_extras.add(extra)
        add(optional[extra])

    add(project.get("dependencies", []))
    for extra in extras:
        add_extra(extra)
    return out


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    sys.stdout.write("".join(f"{r}\n" for r in requirements(Path(sys.argv[1]), sys.argv[2:])))
