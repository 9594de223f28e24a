"""Reading the structured parts of the docs: marked tables and lists, code blocks, links, headings.

Marked regions (HTML comments, invisible on GitHub):

    <!-- flags:FinetuneConfig --> ... <!-- /flags -->          flag tables (first cell `--name`, second the default)
    <!-- errors --> ... <!-- /errors -->                       error tables (first cell: a message excerpt, `…` = any text)
    <!-- metrics-table --> ... <!-- /metrics-table -->         W&B key | metrics.jsonl name | ...
    <!-- resume-must-match --> ... <!-- /resume-must-match --> backticked flag names
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from tests.docs.doc_commands import DOC_FILES, FENCE_RE, REPO

CELL_CODE_RE = re.compile(r"^`([^`]*)`$")


def region(text: str, start: str, end: str) -> str:
    """The text between `<!-- start -->` and `<!-- end -->` (exactly one such region)."""
    pattern = re.compile(rf"<!--\s*{re.escape(start)}\s*-->(.*?)<!--\s*{re.escape(end)}\s*-->", re.S)
    found = pattern.findall(text)
    if len(found) != 1:
        raise AssertionError(f"expected exactly one <!-- {start} --> ... <!-- {end} --> region, found {len(found)}")
    return found[0]


def table_rows(block: str) -> list[list[str]]:
    """Body rows of the markdown table in `block` (header and separator dropped), cells stripped.
    `\\|` inside a cell is an escaped pipe."""
    rows = []
    for line in block.strip().splitlines():
        line = line.strip()
        if not line.startswith("|"):
            continue
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip("|"))]
        rows.append(cells)
    if len(rows) < 2 or not set(rows[1][0]) <= set("-: "):
        raise AssertionError(f"not a markdown table:\n{block[:500]}")
    return rows[2:]


def code(cell: str) -> str:
    """The content of a cell that is exactly one `code span`."""
    m = CELL_CODE_RE.match(cell)
    if not m:
        raise AssertionError(f"expected a single `code` cell, got {cell!r}")
    return m.group(1)


def parse_default(text: str):
    """A default as written in a flag table: None, True/False, "" (empty string), numbers, else the string."""
    if text == "None":
        return None
    if text in ("True", "False"):
        return text == "True"
    if text == '""':
        return ""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def fenced_blocks(path: Path, language: str) -> list[tuple[int, str]]:
    """(first line, body) of every ```language block of a markdown file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out, i = [], 0
    while i < len(lines):
        m = FENCE_RE.match(lines[i])
        if m:
            end = i + 1
            while not lines[end].startswith("```"):
                end += 1
            if m.group(1) == language:
                out.append((i + 1, "\n".join(lines[i + 1:end])))
            i = end + 1
        else:
            i += 1
    return out


def strip_code_blocks(text: str) -> str:
    """The markdown without its fenced code blocks (fences are lines starting with ```)."""
    out, inside = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            inside = not inside
            continue
        if not inside:
            out.append(line)
    return "\n".join(out)


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (letters of any script kept), spaces -> '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def headings(path: Path) -> set[str]:
    text = strip_code_blocks(path.read_text(encoding="utf-8"))  # '#' lines inside code are not headings
    return {github_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.*)$", text, re.M)}


def links(path: Path) -> list[tuple[str, str]]:
    """(link text, target) of every inline markdown link outside code blocks."""
    text = strip_code_blocks(path.read_text(encoding="utf-8"))
    return re.findall(r"\[([^\]]+)\]\(([^)\s]+)\)", text)


# ---- error messages quoted in the docs must exist in the code ----

_PLACEHOLDER_RE = re.compile(r"\{[^{}\n]*\}|%[srd]")
_FLAG_NAME_RE = re.compile(r"\{flag_name\('(\w+)'[^)]*\)\}")
# Adjacent string literals (implicit concatenation across lines): `"...text "\n    f"more..."`.
_ADJACENT_LITERALS_RE = re.compile(r"([\"'])[ \t]*\n[ \t]*[rRfFbB]{0,2}\1")


def _flag_name(m: re.Match) -> str:
    # prismatic/training/craft/config.py: flag_name("enabled") = "use_craft", otherwise "craft_<field>".
    return "use_craft" if m.group(1) == "enabled" else f"craft_{m.group(1)}"


def normalised_source() -> str:
    """The project's Python source (and draccus', whose parse errors users see) with string literals that
    continue over lines joined and every f-string / %-placeholder replaced by `…`."""
    import draccus

    files = [REPO / "vla-scripts" / "finetune.py", REPO / "experiments" / "robot" / "libero" / "run_libero_eval.py"]
    for package in ("prismatic", "craft_experiments"):
        files += sorted((REPO / package).rglob("*.py"))
    files += sorted(Path(draccus.__file__).parent.rglob("*.py"))
    parts = []
    for path in files:
        text = path.read_text(encoding="utf-8")
        text = _ADJACENT_LITERALS_RE.sub("", text)
        text = _FLAG_NAME_RE.sub(_flag_name, text)
        parts.append(_PLACEHOLDER_RE.sub("…", text))
    return "\n".join(parts)


def message_pattern(excerpt: str) -> re.Pattern:
    """A doc excerpt (`…` = any text, `'…'` = a repr'd value) as a regex over `normalised_source()`."""
    excerpt = excerpt.replace("'…'", "…")
    pieces = [re.escape(p) for p in excerpt.split("…")]
    while pieces and not pieces[-1]:
        pieces.pop()
    while pieces and not pieces[0]:
        pieces.pop(0)
    return re.compile(r"[^\n]*?".join(pieces))


def error_excerpts() -> list[tuple[Path, str]]:
    out = []
    for doc in DOC_FILES:
        text = doc.read_text(encoding="utf-8")
        if "<!-- errors -->" not in text:
            continue
        for row in table_rows(region(text, "errors", "/errors")):
            out.append((doc, code(row[0])))
    return out


def dataclass_defaults(cls) -> dict[str, object]:
    """{field: default} of a config dataclass, in declaration order."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            out[f.name] = f.default_factory()  # type: ignore[misc]
        else:
            out[f.name] = dataclasses.MISSING
    return out
