"""The documents: every file they point to exists, and the runs they cite are bundles, not SQLite files."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tbench.results.bundle import read_bundle

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
MARKDOWN = sorted([ROOT / "README.md", *DOCS.rglob("*.md")])

FENCE = re.compile(r"^```.*?^```", re.S | re.M)
CODE_SPAN = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"!?\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
# a docs/ path inside code: at the start, or after a space, quote, '=' or '('
DOCS_PATH = re.compile(r"(?:^|(?<=[\s\"'=(]))(docs/[^\s\"'`)]*)")
PLACEHOLDER = re.compile(r"OUT|[*<>{}$]")


def _line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def references(path: Path) -> list[tuple[int, str, Path]]:
    """(line, as written, resolved path) for every local file the Markdown file points to."""
    text = path.read_text()
    found = []
    for m in LINK.finditer(text):
        target = m.group(1)
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith(("#", "/")):
            continue  # a URL (http:, mailto:), an anchor on this page, or an absolute path (an output)
        found.append((_line(text, m.start()), target, path.parent / target.split("#")[0]))
    code = [(m.start(), m.group(0)) for m in FENCE.finditer(text)]
    code += [(m.start(1), m.group(1)) for m in CODE_SPAN.finditer(FENCE.sub(lambda f: " " * len(f.group(0)), text))]
    for start, snippet in code:
        for m in DOCS_PATH.finditer(snippet):
            target = m.group(1).rstrip(".,;:")
            if not PLACEHOLDER.search(target):
                found.append((_line(text, start + m.start(1)), target, ROOT / target))
    return found


def test_the_documents_are_found():
    names = {p.relative_to(ROOT).as_posix() for p in MARKDOWN}
    assert {"README.md", "docs/methodology.md", "docs/kernel.md"} <= names


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_local_link_and_docs_path_exists(path):
    missing = [f"{path.relative_to(ROOT)}:{line}: {target}" for line, target, resolved in references(path)
               if not resolved.exists()]
    assert not missing, "missing files:\n" + "\n".join(missing)


def test_references_are_recognised(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("[a](a.md) ![i](img/x.png) [u](https://example.com/x.md) [s](#section) [f](/tmp/out.md)\n"
                    "Store `docs/data/x.json.gz`, not `docs/OUT/y` or `docs/*.md`.\n"
                    "```bash\ntbench import docs/data/z.json.gz --db /tmp/z.db\n```\n")
    assert [(line, target) for line, target, _ in references(page)] == [
        (1, "a.md"), (1, "img/x.png"), (4, "docs/data/z.json.gz"), (2, "docs/data/x.json.gz")]


def _files_in_docs_data() -> list[str]:
    try:
        listed = subprocess.run(["git", "ls-files", "docs/data"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: what is on disk
        listed = [p.relative_to(ROOT).as_posix() for p in (DOCS / "data").rglob("*") if p.is_file()]
    return listed


def test_no_sqlite_store_in_docs_data():
    files = _files_in_docs_data()
    assert files, "docs/data holds no files"
    stores = [f for f in files if f.endswith((".db", ".sqlite", ".sqlite3"))]
    assert not stores, f"SQLite stores in docs/data (keep runs as `tbench export` bundles): {stores}"


def test_stored_runs_are_readable_bundles():
    bundles = sorted((DOCS / "data").glob("*.json.gz"))
    assert bundles
    for path in bundles:
        bundle = read_bundle(path)
        assert bundle.runs or bundle.quality_runs, path  # speed runs, quality runs, or both
        assert all(q.results for q in bundle.quality_runs), path


def test_stored_bundles_import_into_an_empty_store_with_ids_from_1(tmp_path):
    """The committed bundles (version 1, written before quality runs travelled, and version 2) import,
    and the runs get ids 1, 2, ... in the bundle's order, as the documents cite them."""
    from tbench.results.bundle import import_runs
    from tbench.results.store import Store

    for i, path in enumerate(sorted((DOCS / "data").glob("*.json.gz"))):
        bundle = read_bundle(path)
        assert bundle.version in (1, 2), path
        store = Store(str(tmp_path / f"{i}.db"))
        result = import_runs(store, bundle.runs)
        assert result.imported == [(r.uuid, n) for n, r in enumerate(bundle.runs, start=1)], path
        assert len(store.measurements()) == sum(len(r.measurements) for r in bundle.runs), path
        store.close()
