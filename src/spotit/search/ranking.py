"""Turning scores into rankings, and the assignment's rank-list file format.

A rank list has one line per query, `Q<query name>: <id>, <id>, ...`, where an id is a gallery file name without
its extension. A name is written bare unless it is empty, starts with a double quote, has leading or trailing
whitespace, or contains a comma, a double quote, a backslash or a non-printable character (newline, tab, any
other control, line separator, format character or non-ASCII space) — or, for the query name, a colon. Such a
name is written as a JSON string literal (in double quotes, with backslash escapes for the quote, the backslash
and every non-printable character), so a line never holds a raw line break and parses one way only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..errors import SpotitError
from ..fileio import write_output

_DECODER = json.JSONDecoder()  # strict: a raw control character inside a quoted name is an error


def rank(scores: np.ndarray, top: int | None = None) -> np.ndarray:
    """Indices from best to worst score; ties keep gallery order so rankings are reproducible. With `top`,
    only the first `top` of that order (a partial sort: a million photos need not all be sorted)."""
    keys = -np.asarray(scores, dtype=np.float64)
    if top is None or top >= len(keys):
        return np.argsort(keys, kind="stable")
    if top <= 0:
        return np.zeros(0, np.int64)
    cut = np.partition(keys, top - 1)[top - 1]
    chosen = np.flatnonzero(keys <= cut)  # in gallery order, ties at the cut included
    return chosen[np.argsort(keys[chosen], kind="stable")][:top]


def _is_bare(name: str, query: bool) -> bool:
    """Whether `name` may be written as it is (see the module docstring)."""
    return (
        name != ""
        and name == name.strip()
        and not name.startswith('"')
        and not any(c in ',"\\' or (query and c == ":") or not c.isprintable() for c in name)
    )


def _json_string(name: str) -> str:
    """A JSON string literal for `name` that holds printable characters only: json.dumps escapes the C0 controls,
    the quote and the backslash; the other non-printable characters (DEL, C1 controls such as NEL, U+2028/2029,
    bidi overrides, lone surrogates from undecodable file names) are \\u-escaped here, astral ones as a
    surrogate pair, as JSON requires."""
    out = []
    for c in json.dumps(name, ensure_ascii=False):
        if c.isprintable():
            out.append(c)
        elif ord(c) > 0xFFFF:
            high, low = divmod(ord(c) - 0x10000, 0x400)
            out.append(f"\\u{0xD800 + high:04x}\\u{0xDC00 + low:04x}")
        else:
            out.append(f"\\u{ord(c):04x}")
    return "".join(out)


def format_name(name: str, query: bool = False) -> str:
    """One name as written in a rank list: bare when that is unambiguous, else a JSON string literal."""
    return name if _is_bare(name, query) else _json_string(name)


def ranklist_line(query_name: str, ids: list[str]) -> str:
    """`Q<name>: <id>, <id>, ...` as in the assignment, names quoted only where they need it."""
    return f"Q{format_name(query_name, query=True)}: " + ", ".join(format_name(i) for i in ids)


def write_ranklist(path: str | os.PathLike, lines: list[str]) -> None:
    """Write the rank list atomically so a partial file never replaces a good one."""
    path = Path(path)
    write_output(path, ("\n".join(lines) + "\n").encode("utf-8"))


def _skip_blanks(line: str, pos: int) -> int:
    while pos < len(line) and line[pos].isspace():
        pos += 1
    return pos


def _token(line: str, pos: int, stops: str, query: bool, where: str, what: str) -> tuple[str, int]:
    """Read one name starting at `pos` (blanks skipped); return it and the position just after it."""
    pos = _skip_blanks(line, pos)
    if line.startswith('"', pos):
        try:
            name, end = _DECODER.raw_decode(line, pos)
        except json.JSONDecodeError as exc:
            raise SpotitError(f"{where}: bad quoted {what} at column {pos + 1}: {exc.msg}") from None
        return name, end
    end = pos
    while end < len(line) and line[end] not in stops:
        end += 1
    name = line[pos:end].strip()
    if not name:
        raise SpotitError(f"{where}: empty {what} at column {pos + 1}")
    if not _is_bare(name, query):
        raise SpotitError(f"{where}: {what} {name!r} must be written in double quotes")
    return name, end


def parse_ranklist_line(line: str, where: str = "rank list") -> tuple[str, list[str]]:
    """The query name and ids of one rank-list line; SpotitError naming `where` if it is malformed."""
    pos = _skip_blanks(line, 0)
    if not line.startswith("Q", pos):
        raise SpotitError(f"{where}: expected 'Q<query name>: <id>, ...', got {line[:40]!r}")
    query, pos = _token(line, pos + 1, ":", True, where, "query name")
    pos = _skip_blanks(line, pos)
    if not line.startswith(":", pos):
        raise SpotitError(f"{where}: expected ':' after the query name at column {pos + 1}")
    ids = []
    pos = _skip_blanks(line, pos + 1)
    while pos < len(line):
        name, pos = _token(line, pos, ",", False, where, "id")
        ids.append(name)
        pos = _skip_blanks(line, pos)
        if pos < len(line):
            if line[pos] != ",":
                raise SpotitError(f"{where}: expected ',' after id {name!r} at column {pos + 1}")
            pos += 1
            if _skip_blanks(line, pos) == len(line):
                raise SpotitError(f"{where}: empty id at the end of the line")
    return query, ids


def read_ranklist(path: str | os.PathLike) -> dict[str, list[str]]:
    """Parse a rank-list file back into {query name: [ids]}, exactly inverting `ranklist_line`.

    Blank lines are skipped and blanks around separators are allowed; a malformed line or a query listed twice
    raises SpotitError with the line number."""
    ranking: dict[str, list[str]] = {}
    seen: dict[str, int] = {}
    try:
        text = Path(path).read_bytes().decode("utf-8-sig")  # -sig: a BOM left by an editor is not part of line 1
    except UnicodeDecodeError as exc:
        raise SpotitError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    for number, line in enumerate(text.split("\n"), 1):  # not splitlines(): the format ends lines with \n only
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        query, ids = parse_ranklist_line(line, where)
        if query in seen:
            raise SpotitError(f"{where}: query {query!r} already listed on line {seen[query]}")
        seen[query] = number
        ranking[query] = ids
    return ranking
