"""The documentation's references resolve.

- Every relative Markdown link in a tracked ``.md`` file, and every repository path it names in inline
  code, points at a file or folder that exists.
- Every repository path named in a docstring or comment of a tracked ``.py`` file exists.
- No page outside ``results/`` cites a path of the machine it was written on (``/work/...``, a home).

(The settings table in ``docs/service.md`` is checked by ``tests/unit/service/test_settings.py``.)
"""

from __future__ import annotations

import ast
import io
import re
import subprocess
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Top-level folders a path in a docstring may start with; `shared/` is deliberately included: it is
# outside the repository, so a docstring that cites it is a dangling reference.
_TOP = "models|service|deltagate|proxy|docs|tests|docker|deploy|loadtests|results|bundles|shared|\\.ci"
_PATH_IN_TEXT = re.compile(rf"(?<![\w/.-])((?:{_TOP})/[\w./-]*\w\.[A-Za-z]{{1,5}})(?![\w/-])")
_MD_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _tracked(suffix: str) -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", f"*{suffix}"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout
    return [ROOT / line for line in out.splitlines() if (ROOT / line).is_file()]


def _docstrings_and_comments(path: Path) -> list[str]:
    source = path.read_text(encoding="utf-8")
    texts = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                texts.append(doc)
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    texts += [tok.string for tok in tokens if tok.type == tokenize.COMMENT]
    return texts


def test_markdown_links_resolve() -> None:
    broken = []
    for md in _tracked(".md"):
        text = re.sub(r"```.*?```", "", md.read_text(encoding="utf-8"), flags=re.DOTALL)  # code blocks are not links
        for target in _MD_LINK.findall(text):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # a URL (http:, mailto:, data:) or an anchor in the same page
            if not (md.parent / target.split("#", 1)[0]).exists():
                broken.append(f"{md.relative_to(ROOT)}: {target}")
        for code in re.findall(r"`([^`]+)`", text):  # inline code naming a repository path
            missing = [ref for ref in _PATH_IN_TEXT.findall(code) if not (ROOT / ref).exists()]
            broken += [f"{md.relative_to(ROOT)}: {ref}" for ref in missing]
    assert not broken, "Markdown links or paths to missing files:\n" + "\n".join(broken)


def test_paths_in_docstrings_and_comments_resolve() -> None:
    broken = []
    for py in _tracked(".py"):
        for text in _docstrings_and_comments(py):
            for ref in _PATH_IN_TEXT.findall(text):
                if not (ROOT / ref).exists():
                    broken.append(f"{py.relative_to(ROOT)}: {ref}")
    assert not broken, "docstrings/comments name files that do not exist:\n" + "\n".join(broken)


_MACHINE_PATH = re.compile(r"(?<![\w.])/(?:work|root|home/\w+)/[\w./-]+")


def test_no_page_cites_a_path_of_the_build_machine() -> None:
    found = [f"{md.relative_to(ROOT)}: {m}" for md in _tracked(".md") if not md.relative_to(ROOT).parts[0] == "results"
             for m in _MACHINE_PATH.findall(md.read_text(encoding="utf-8"))]
    assert not found, "pages cite files of the machine they were written on:\n" + "\n".join(found)
    assert _MACHINE_PATH.findall("see /work/shared/PROXY-NOTES.md and /tmp/x") == ["/work/shared/PROXY-NOTES.md"]


def test_the_link_checker_catches_a_dangling_reference() -> None:
    found = _PATH_IN_TEXT.findall("see ``shared/METHOD.md`` and docs/METHOD.md.")
    assert found == ["shared/METHOD.md", "docs/METHOD.md"]
    assert _MD_LINK.findall("[spec](docs/METHOD.md) and [site](https://x.org)") == ["docs/METHOD.md", "https://x.org"]
