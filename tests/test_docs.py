"""The documents' links resolve: every relative link in README.md and docs/*.md names a file of
the repository, and every `#anchor` a heading of its page, as GitHub makes anchors."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import ROOT

LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} (.*)$")


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def outside_code(text: str) -> list[str]:
    """The lines of a Markdown text that are not inside ``` fences."""
    lines, fenced = [], False
    for line in text.split("\n"):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())  # a link keeps its text
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """A page's anchors; a repeated heading gets -1, -2... as on GitHub."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in outside_code(path.read_text()):
        match = HEADING.match(line)
        if match:
            base = slug(match.group(1))
            found.add(f"{base}-{seen[base]}" if base in seen else base)
            seen[base] = seen.get(base, 0) + 1
    return found


def broken_links(path: Path) -> list[str]:
    broken = []
    for line in outside_code(path.read_text()):
        for target in LINK.findall(line):
            if re.match(r"^[a-z]+:", target):  # https:, mailto:
                continue
            file, _, anchor = target.partition("#")
            destination = (path.parent / file).resolve() if file else path
            if not destination.exists():
                broken.append(f"{target} (no such file)")
            elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
                broken.append(f"{target} (no such heading)")
    return broken


def test_every_link_and_anchor_resolves():
    broken = {path.relative_to(ROOT).as_posix(): links
              for path in documents() if (links := broken_links(path))}
    assert broken == {}


def test_the_link_check_finds_a_broken_link(tmp_path):
    (tmp_path / "other.md").write_text("# A heading\n\n## Twice\n\n## Twice\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md#a-heading) [ok](other.md#twice-1) [gone](missing.md)\n"
                    "[bad](other.md#no-heading) [web](https://example.org)\n"
                    "```\n[in code](nowhere.md)\n```\n")
    assert broken_links(page) == ["missing.md (no such file)",
                                  "other.md#no-heading (no such heading)"]


def test_slugs_follow_github():
    assert slug("Training: the recipe (v2)") == "training-the-recipe-v2"
    assert slug("`make demo`'s card") == "make-demos-card"
