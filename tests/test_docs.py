"""The docs a newcomer reads: the README stays a landing page, and every relative link in it and in docs/
points to a file that exists (an anchor must name a heading of the target page)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 250

# [text](target) and [text](target "title"); images too. Code spans and fenced blocks are dropped first.
LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")


def relative_links(markdown: str) -> list[str]:
    """The link targets of a page that are not URLs (no scheme), outside code."""
    text = CODE_SPAN.sub("", FENCE.sub("", markdown))
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t) and not t.startswith("//")]


def heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for line in FENCE.sub("", markdown).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            anchors.add(re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-"))
    return anchors


def test_the_link_finder_skips_urls_and_code():
    page = ('[a](docs/x.md) [`f`](../y.py#L3) [c](https://e.org) `[d](z.md)` [e](#top "t")\n'
            "```bash\n[g](in_a_fence.md)\n```\n[h](<../z.md>)")
    assert relative_links(page) == ["docs/x.md", "../y.py#L3", "#top", "../z.md"]


def test_heading_anchors_follow_github():
    page = "# Top\n## The study's tables\n## 5d. Paired image bootstrap\n```\n# not a heading\n```\n### `--x` flag"
    assert heading_anchors(page) == {"top", "the-studys-tables", "5d-paired-image-bootstrap", "--x-flag"}


def test_readme_is_a_landing_page():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move reference material to docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_to_an_existing_file(page):
    missing = []
    for target in relative_links(page.read_text(encoding="utf-8")):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            missing.append(f"{target} (no such file: {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest})")
        elif anchor and dest.suffix == ".md" and anchor not in heading_anchors(dest.read_text(encoding="utf-8")):
            missing.append(f"{target} (no heading '{anchor}' in {dest.relative_to(ROOT)})")
    assert not missing, f"{page.relative_to(ROOT)}: broken links: " + "; ".join(missing)


def test_docs_index_lists_every_page():
    index = (ROOT / "docs" / "README.md").read_text(encoding="utf-8")
    pages = {p.name for p in (ROOT / "docs").glob("*.md")} - {"README.md"}
    assert pages == set(re.findall(r"\]\(([\w-]+\.md)\)", index)), "docs/README.md: one line per page"
