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


# README's import rule: the packages in data-flow order; each imports only those before it (and utils, which
# imports none of them); none imports an entry script or bench/ (benchmarks, which import anything, as scripts do).
LAYERS = ("data_utils", "models", "losses", "metrics", "engine", "report")
ENTRY_SCRIPTS = tuple(p.stem for p in sorted(ROOT.glob("*.py")) if p.name != "conftest.py")
TOP = (*ENTRY_SCRIPTS, "bench")


def project_imports(path: Path) -> set[str]:
    """The top-level project names (packages, entry scripts) a file imports anywhere, lazy imports included."""
    import ast

    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & {*LAYERS, "utils", *TOP}


def test_project_imports_finds_lazy_imports_and_skips_others(tmp_path):
    source = tmp_path / "x.py"
    source.write_text("import numpy\nimport engine.config as c\nfrom metrics.keys import A\n"
                      "def f():\n    from report import load\n    import evaluate\nfrom . import sibling\n")
    assert project_imports(source) == {"engine", "metrics", "report", "evaluate"}


def test_readme_data_flow_sentence_holds_for_every_import():
    """README.md: "a package imports only the packages before it ..., never one after it": checked on every
    import statement of every package (report/'s freedom from torch: tests/test_aggregate.py)."""
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    assert " → ".join(f"`{p}`" for p in LAYERS) + " → the entry scripts" in readme
    assert {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()} == {*LAYERS, "utils", "bench"}
    assert {"train", "evaluate", "precompute_sdt", "aggregate"} <= set(ENTRY_SCRIPTS)
    wrong = []
    for rank, package in enumerate(("utils", *LAYERS)):
        allowed = {"utils", *LAYERS[:rank]}  # utils (rank 0) may import only itself
        for path in sorted((ROOT / package).rglob("*.py")):
            for name in sorted(project_imports(path) - allowed - {package}):
                wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not wrong, "imports against README's data flow: " + "; ".join(wrong)


def test_training_md_lists_every_flag_a_resume_may_change():
    """docs/training.md's list of what may change on resume is engine.config.RESUMABLE_CHANGES, flag by flag (the
    three W&B destination flags are "the W&B flags")."""
    from engine.config import RESUMABLE_CHANGES

    text = (ROOT / "docs" / "training.md").read_text()
    start = text.index("These may change on resume")
    block = text[start:text.index("`engine.config.RESUMABLE_CHANGES`", start)]
    listed = {flag[2:].replace("-", "_") for flag in re.findall(r"`(--[a-z-]+)`", block)}
    assert "the W&B flags" in block
    assert RESUMABLE_CHANGES - {"wandb", "wandb_project", "wandb_entity"} == listed


# `tests/test_x.py::name`, and `::name` for another test of the file named last on the same line.
CITED_TEST = re.compile(r"`(tests/[\w/]+\.py)?::(\w+)`")


def cited_tests(markdown: str) -> list[tuple[str, str]]:
    """The (file, test name) pairs a page cites; a bare `::name` takes the file cited before it on its line."""
    cited = []
    for line in markdown.splitlines():
        file = None
        for m in CITED_TEST.finditer(line):
            file = m.group(1) or file
            cited.append((file, m.group(2)))
    return cited


def test_the_cited_test_finder_takes_the_file_of_a_bare_name_from_its_line():
    page = "| x | `tests/test_a.py::one`, `::two`, `tests/test_b.py::three` |\n| y | `::four` |"
    assert cited_tests(page) == [("tests/test_a.py", "one"), ("tests/test_a.py", "two"),
                                 ("tests/test_b.py", "three"), (None, "four")]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_cited_test_exists(page):
    """docs/faults.md backs each row with named tests: a renamed or dropped test must not leave a dead name."""
    import ast

    defined: dict[str, set[str]] = {}
    missing = []
    for file, name in cited_tests(page.read_text(encoding="utf-8")):
        if file is None:
            missing.append(f"::{name} (no test file named before it on its line)")
            continue
        if file not in defined:
            path = ROOT / file
            tree = ast.parse(path.read_text(encoding="utf-8")) if path.is_file() else ast.Module(body=[])
            defined[file] = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        if name not in defined[file]:
            missing.append(f"{file}::{name}")
    assert not missing, f"{page.relative_to(ROOT)}: cites tests that do not exist: " + "; ".join(missing)
