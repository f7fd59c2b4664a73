"""The documentation holds together: a short README, no dead relative links, no orphan docs page."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"

README_MAX_LINES = 220
COMMANDS_WITHIN_LINES = 40

# [text](target) and ![alt](target); the target ends at whitespace (an optional "title" may follow) or ")"
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_FENCE = re.compile(r"^\s*(```|~~~)")
_EXTERNAL = ("http://", "https://", "mailto:")


def _docs_pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def _prose_lines(path: Path) -> list[tuple[int, str]]:
    """Return (line number, text) of the lines outside fenced code blocks."""
    lines, fenced = [], False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, line))
    return lines


def _relative_links(path: Path) -> list[tuple[int, str]]:
    """Return (line number, target without #anchor) of every relative link in ``path``."""
    links = []
    for number, line in _prose_lines(path):
        for target in _LINK.findall(re.sub(r"`[^`]*`", "", line)):
            if target.startswith(_EXTERNAL) or target.startswith("#"):
                continue
            links.append((number, target.split("#", 1)[0]))
    return links


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_readme_is_short_and_starts_with_the_two_commands():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): move detail into docs/"
    )
    head = "\n".join(lines[:COMMANDS_WITHIN_LINES])
    for command in ("make demo", "make test"):
        assert command in head, f"README.md: `{command}` is not in its first {COMMANDS_WITHIN_LINES} lines"


def test_every_relative_link_points_to_a_file_that_exists():
    dead = []
    for page in [README, *_docs_pages()]:
        for number, target in _relative_links(page):
            if not target:
                continue
            if not (page.parent / target).exists():
                dead.append(f"{_rel(page)}:{number}: {target}")
    assert not dead, "dead relative links (file:line: target):\n" + "\n".join(dead)


def test_every_docs_page_is_linked_from_the_readme_or_another_docs_page():
    linked: set[Path] = set()
    for page in [README, *_docs_pages()]:
        for _, target in _relative_links(page):
            if target:
                resolved = (page.parent / target).resolve()
                if resolved != page.resolve():
                    linked.add(resolved)
    orphans = [_rel(page) for page in _docs_pages() if page.resolve() not in linked]
    assert not orphans, "docs pages no other page links to (link them from README.md or a docs page):\n" + "\n".join(
        orphans
    )


def test_the_link_finder_sees_what_it_must():
    # guards the test above against a regex that silently finds nothing
    sample = ROOT / "README.md"
    assert _relative_links(sample), "README.md: no relative link found at all (the where-to-go-next list?)"
    assert _LINK.findall("see [a](docs/a.md#x), ![b](img/b.png) and [c](https://e.org)") == [
        "docs/a.md#x",
        "img/b.png",
        "https://e.org",
    ]


def test_the_configuration_reference_is_current():
    import importlib.util

    spec = importlib.util.spec_from_file_location("config_reference", ROOT / "scripts" / "config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    page = ROOT / "docs" / "config_reference.md"
    assert page.read_text() == module.render(), "docs/config_reference.md is stale: run scripts/config_reference.py"
    # the descriptions come from the models' comments: a sample must be there
    assert (
        "| `cascade.escalate_above` | float | `0.5` | >= 0.0, <= 1.0 | escalate when signal > this |"
        in page.read_text()
    )
