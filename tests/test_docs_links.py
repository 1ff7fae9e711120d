"""The documentation holds together, and everything that cites it points at something real.

- Every relative link of README.md and docs/*.md reaches a file of the repository, and a `#anchor`
  reaches a heading of the page it names.
- Every document that code, tests, benchmarks or suites cite (`docs/<page>.md`, `README.md`, with
  `section "<heading>"` when they name one) exists, and so does the heading.
- Every repository path those files and the pages name in passing (`tests/test_package.py`,
  `mas_flower/strategy/`) exists.
- Nothing cites a file outside the repository (the team's design.md, an audit) or an issue number:
  issues are not in the repository.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
#: Where citations of the documentation live: code, tests, benchmarks, suites, the apps.
CITING_DIRS = ("mas_flower", "tests", "benchmarks", "conf", "client_app", "server_app")
CITING_FILES = ("run.sh", ".ci/run", "pyproject.toml")
CITING_SUFFIXES = {".py", ".yaml", ".yml", ".toml", ".sh"}

#: A markdown link or image: [text](target) or ![alt](target).
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
#: A cited document, optionally with the heading it names: docs/design.md, section "Lookahead affinity".
CITATION = re.compile(r"(?<![\w/.-])(docs/[\w.-]+\.md|README(?:\.md)?)\b(?:,?\s+section)?(?:,?\s+\"([^\"]+)\")?")
#: A path into the repository named in passing.
REPO_PATH = re.compile(r"(?<![\w./~$<-])((?:mas_flower|tests|benchmarks|conf|client_app|server_app|docs)/[\w./-]*)")
#: What no file may cite, and why.
OUTSIDE = [
    (re.compile(r"\bissues?\s+#?\d+", re.IGNORECASE), "an issue number (issues are not in the repository)"),
    (re.compile(r"audit-\d{4}|\.\./shared|\bshared/(?:design|audit|paper)"), "a file outside the repository"),
]
#: In code, design.md is only ever docs/design.md (the pages link it as plain `design.md`).
FORBIDDEN = [
    (re.compile(r"(?<![\w/])design\.md"), "design.md outside docs/ (the team's note is not in the repository)"),
    *OUTSIDE,
]


def without_code_blocks(text: str) -> str:
    """The markdown with every fenced code block blanked (line count kept)."""
    out, fenced = [], False
    for line in text.split("\n"):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            out.append("")
        else:
            out.append("" if fenced else line)
    return "\n".join(out)


def heading_texts(page: Path) -> list[str]:
    """The page's headings as written, without the leading #s."""
    found = re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", without_code_blocks(page.read_text()), re.M)
    return [h.strip() for h in found]


def plain(heading: str) -> str:
    """A heading as a citation names it: without markdown's backticks and emphasis."""
    return re.sub(r"[`*_]", "", heading).strip()


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = plain(heading).lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return kept.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in heading_texts(page):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def citing_files() -> list[Path]:
    files = [REPO / f for f in CITING_FILES if (REPO / f).is_file()]
    for folder in CITING_DIRS:
        files += sorted(p for p in (REPO / folder).rglob("*") if p.suffix in CITING_SUFFIXES and p.is_file())
    return [f for f in files if f != Path(__file__).resolve() and "__pycache__" not in f.parts]


def joined(text: str) -> str:
    """Text with line breaks, indentation and comment markers folded into single spaces, so that a
    citation wrapped over lines of a comment or docstring reads as one."""
    return re.sub(r"[ \t]*\n[ \t]*(?:#:?[ \t]*)?", " ", text)


def page_link_problems(page: Path, text: str | None = None) -> list[str]:
    """Links of `page` (its text, or `text` as if it were the page) that reach no file or heading."""
    problems = []
    for target in LINK.findall(without_code_blocks(page.read_text() if text is None else text)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        where = f"{page.relative_to(REPO)}: link {target!r}"
        if not dest.is_relative_to(REPO) or not dest.exists():
            problems.append(f"{where}: no such file in the repository")
        elif anchor and (dest.suffix != ".md" or anchor not in anchors(dest)):
            problems.append(f"{where}: no heading with anchor #{anchor} in {dest.relative_to(REPO)}")
    return problems


def citation_problems(path: Path, text: str, forbidden=FORBIDDEN) -> list[str]:
    """Stale or forbidden citations in one file's text."""
    problems, where = [], str(path.relative_to(REPO))
    text = joined(text)
    for match in CITATION.finditer(text):
        name, section = match.group(1), match.group(2)
        doc = REPO / ("README.md" if name.startswith("README") else name)
        if not doc.is_file():
            problems.append(f"{where}: cites {name}, which does not exist")
        elif section is not None and section not in {plain(h) for h in heading_texts(doc)}:
            problems.append(f"{where}: cites {name}, section {section!r}, which has no such heading")
    for pattern, why in forbidden:
        for match in pattern.finditer(text):
            problems.append(f"{where}: cites {why}: {text[max(0, match.start() - 40) : match.end() + 20]!r}")
    return problems


def path_problems(path: Path, text: str) -> list[str]:
    """Repository paths named in a file that do not exist (globs and placeholders skipped)."""
    problems = []
    for match in REPO_PATH.finditer(text):
        name = match.group(1).rstrip(".-")
        if text[match.end() : match.end() + 1] in ("*", "<", "{"):  # a glob or a placeholder
            continue
        if not (REPO / name).exists():
            problems.append(f"{path.relative_to(REPO)}: names {name}, which does not exist")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_link_of_the_documentation_reaches_a_file_and_heading(page: Path) -> None:
    assert page_link_problems(page) == []


def test_the_readme_links_every_page_of_docs() -> None:
    readme = (REPO / "README.md").read_text()
    linked = {(REPO / t.partition("#")[0]).resolve() for t in LINK.findall(readme)}
    assert [p.name for p in PAGES[1:] if p not in linked] == []


def test_every_citation_in_code_names_an_existing_page_and_section() -> None:
    problems = []
    for path in citing_files():
        text = path.read_text(errors="replace")
        problems += citation_problems(path, text) + path_problems(path, text)
    assert problems == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_repository_path_in_the_documentation_exists(page: Path) -> None:
    text = page.read_text()
    assert path_problems(page, text) + citation_problems(page, text, forbidden=OUTSIDE) == []


def test_a_stale_citation_is_caught() -> None:
    """The checks above do catch what they look for (a planted example of each kind)."""
    here = REPO / "mas_flower" / "example.py"
    planted = (
        '"""See docs/design.md, section "No such heading", and docs/nowhere.md;\n'
        '# wrapped: docs/design.md, section "Lookahead\n# affinity"; README, "Messages per round".\n'
        'Also design.md section 4, issue 12 and tests/test_defaults.py."""\n'
    )
    problems = citation_problems(here, planted) + path_problems(here, planted)
    assert any("'No such heading'" in p for p in problems)
    assert any("docs/nowhere.md" in p for p in problems)
    assert any("'Messages per round'" in p for p in problems)
    assert any("design.md outside docs/" in p for p in problems)
    assert any("issue number" in p for p in problems)
    assert any("tests/test_defaults.py" in p for p in problems)
    assert not any("'Lookahead affinity'" in p for p in problems)  # a wrapped citation that is right
    page = REPO / "docs" / "example.md"
    assert page_link_problems(page, "[x](design.md#no-such-anchor) [y](nowhere.md) [z](design.md#method)") == [
        "docs/example.md: link 'design.md#no-such-anchor': no heading with anchor #no-such-anchor in docs/design.md",
        "docs/example.md: link 'nowhere.md': no such file in the repository",
    ]
