"""The README and docs/ stand alone: every relative link resolves inside the repository, none
points to ../shared (the team's notes, absent from a clone), and the README stays short."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# [text](target) and [text](target "title"); images too. Code spans are removed first.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
CODE = re.compile(r"```.*?```|`[^`\n]*`", re.S)


def _links(page: Path) -> list[str]:
    return LINK.findall(CODE.sub("", page.read_text(encoding="utf-8")))


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for line in CODE.sub("", page.read_text(encoding="utf-8")).splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


def test_there_are_pages_and_links():
    assert (REPO / "docs" / "architecture.md").is_file() and (REPO / "docs" / "operating.md").is_file()
    assert sum(len(_links(p)) for p in PAGES) > 20


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves_inside_the_repository(page):
    bad = []
    for target in _links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):        # https:, mailto: ... not a file
            continue
        path, _, anchor = target.partition("#")
        if "shared" in Path(path).parts or "/work/" in path:
            bad.append(f"{target}: points to the team's shared notes")
            continue
        resolved = (page.parent / path).resolve() if path else page
        if REPO not in resolved.parents and resolved != REPO:
            bad.append(f"{target}: leaves the repository")
        elif not resolved.exists():
            bad.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            bad.append(f"{target}: no heading #{anchor} in {resolved.name}")
    assert not bad, f"{page.name}: " + "; ".join(bad)


def test_readme_links_the_architecture_and_operating_pages_and_stays_short():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert "docs/architecture.md" in _links(REPO / "README.md") and "docs/operating.md" in _links(REPO / "README.md")
    assert len(text.splitlines()) <= 250
    assert "../shared" not in text and "/work/shared" not in text
