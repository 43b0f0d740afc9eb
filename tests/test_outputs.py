"""Outputs a user reads or parses: the rank-list format whatever the file names, and the grid's captions."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image, ImageDraw

from spotit.errors import SpotitError
from spotit.grid import (
    PAD,
    TILE,
    caption_font,
    caption_height,
    caption_lines,
    display_text,
    display_units,
    fit_text,
    font_codepoints,
    render_grid,
)
from spotit.search.ranking import ranklist_line, read_ranklist, write_ranklist

NASTY = ["a, b", "x:y", 'quote"d', "back\\slash", "new\nline", " lead", "trail ", "ünïcödé 名前", '"start', "plain-7"]
MORE_NASTY = ["", "tab\tin", "cr\rin", "nel\x85in", "ls\u2028in", "rtl\u202eoverride", "lone\udcffsurrogate"]
MORE_NASTY += ["😀", "a,", ","]


# --- rank lists ---------------------------------------------------------------------------------------------------


def test_ordinary_names_keep_the_bare_assignment_format():
    assert ranklist_line("1", ["a", "b_c", "3"]) == "Q1: a, b_c, 3"
    # spaces inside, non-ASCII letters and (in ids) colons need no quotes
    assert ranklist_line("7", ["x:y", "ünïcödé 名前", "dir/a b"]) == "Q7: x:y, ünïcödé 名前, dir/a b"


def test_names_that_need_it_are_json_string_literals():
    assert ranklist_line("x:y", ["a, b", 'quote"d', "new\nline", " lead"]) == (
        'Q"x:y": "a, b", "quote\\"d", "new\\nline", " lead"'
    )
    line = ranklist_line("q", ["ls\u2028in", "nel\x85in", "😀\u202e"])
    assert line.isprintable() and len(line.splitlines()) == 1
    assert line == 'Qq: "ls\\u2028in", "nel\\u0085in", "😀\\u202e"'


@pytest.mark.parametrize("query", NASTY + MORE_NASTY)
def test_every_name_round_trips_through_the_file(tmp_path, query):
    ids = NASTY + MORE_NASTY
    other = ["Q2", "2"]
    path = tmp_path / "rankList.txt"
    write_ranklist(path, [ranklist_line(query, ids), ranklist_line(other[1], list(reversed(ids)))])
    text = path.read_text(encoding="utf-8")
    assert text.count("\n") == 2 and len(text.splitlines()) == 2  # one line per query, whatever the names
    assert read_ranklist(path) == {query: ids, "2": list(reversed(ids))}


def test_a_comma_in_a_name_is_one_entry_not_two(tmp_path):
    path = tmp_path / "r.txt"
    write_ranklist(path, [ranklist_line("1", ["a, b", "c"])])
    assert read_ranklist(path)["1"] == ["a, b", "c"]


def test_quoted_tokens_are_plain_json():
    line = ranklist_line("x:y", NASTY)
    assert json.loads(line[1 : line.index('":') + 1]) == "x:y"


def test_reader_allows_blank_lines_crlf_a_bom_and_loose_spacing(tmp_path):
    path = tmp_path / "r.txt"
    path.write_bytes('\ufeffQ1: a, b\r\n\r\n  Q2 :c,"d, e" ,f\r\nQ3:\n'.encode("utf-8"))
    assert read_ranklist(path) == {"1": ["a", "b"], "2": ["c", "d, e", "f"], "3": []}


@pytest.mark.parametrize(
    "bad",
    [
        "1: a, b",  # no Q
        "Q1 a, b",  # no colon
        "Q1: a,, b",  # empty id
        "Q1: a, b,",  # trailing comma
        'Q1: "a" b',  # junk after a quoted id
        'Q1: a"b',  # a quote in a bare id
        "Q1: back\\slash",  # a backslash in a bare id
        'Q1: "open',  # unterminated
        'Q1: "raw\ttab"',  # raw control character inside quotes
        'Q"1: a',  # bad quoted query
        "Q: a",  # empty query name
        "Q1: ünï\u2028x",  # a raw line separator in a bare id
    ],
)
def test_malformed_lines_raise_with_their_line_number(tmp_path, bad):
    path = tmp_path / "r.txt"
    path.write_text(f"Q0: x\n\n{bad}\n", encoding="utf-8")
    with pytest.raises(SpotitError, match=r"line 3"):
        read_ranklist(path)


def test_a_query_listed_twice_or_a_non_utf8_file_is_an_error(tmp_path):
    path = tmp_path / "r.txt"
    path.write_text("Q1: a\nQ1: b\n", encoding="utf-8")
    with pytest.raises(SpotitError, match=r"line 2.*already listed on line 1"):
        read_ranklist(path)
    path.write_bytes(b"Q1: \xff\n")
    with pytest.raises(SpotitError, match="UTF-8"):
        read_ranklist(path)


# --- grid captions --------------------------------------------------------------------------------------------------

SCRIPTS = ["Привет мир", "Ελληνικά", "名前の写真", "한국어 사진", "😀 cat 🐱", "x" * 200, "名" * 200, "a\\u0041"]
MISSING = "\U000f0000\U000f0001"  # private use: in no font's cmap here


def _ink(font, text: str) -> np.ndarray:
    picture = Image.new("L", (40 + 20 * len(text), 40))
    ImageDraw.Draw(picture).text((4, 4), text, fill=255, font=font)
    return np.asarray(picture)


def test_display_units_escape_what_the_font_cannot_draw_or_show():
    codepoints = {ord(c) for c in "a名Б é"}
    assert display_units("a名😀\\\tБ", codepoints) == ["a", "名", "\\U0001f600", "\\\\", "\\u0009", "Б"]
    assert display_text("e\u0301", codepoints) == "é"  # NFC first: a decomposed name still draws
    assert display_text("a\u202eb\u200b", codepoints | {ord("b")}) == "a\\u202eb\\u200b"  # invisible -> visible
    # unambiguous: a literal backslash-u name and an escaped character differ
    assert display_text("\\u00e9", codepoints | {ord(c) for c in "u0e9"}) != display_text("\u00e9", set())


def test_caption_font_draws_cyrillic_greek_cjk_and_hangul_and_escapes_emoji():
    for name in SCRIPTS[:4]:
        assert display_text(name) == name
    assert display_text("😀 cat") == "\\U0001f600 cat"


def test_every_character_a_caption_draws_has_a_real_glyph():
    font, codepoints = caption_font()
    assert not {ord(c) for c in MISSING} & codepoints
    notdef = _ink(font, MISSING[0])
    assert notdef.any()  # the font's .notdef is a visible box: the thing captions must never show
    for name in SCRIPTS + ["ünïcödé", "مرحبا", "שלום", "नमस्ते"]:
        for char in set(display_text(name)):
            assert not np.array_equal(_ink(font, char), notdef), (name, char)
    # and the cmap reading agrees with what FreeType draws: what it calls missing is drawn as .notdef
    for char in "😀مש\U000f0001":
        assert ord(char) not in codepoints and np.array_equal(_ink(font, char), notdef)
    assert not np.array_equal(_ink(font, "名前"), _ink(font, MISSING))


def _font_with_cmap4() -> bytes:
    """A minimal sfnt holding only a (3, 1) format-4 cmap: A-C by delta, a by a delta that wraps to glyph 0
    (missing), x-z through the glyph array with y mapped to glyph 0 (missing)."""
    import struct

    ends, starts, deltas, offsets = [67, 97, 122, 0xFFFF], [65, 97, 120, 0xFFFF], [1 - 65, -97, 0, 1], [0, 0, 4, 0]
    glyphs = [5, 0, 7]
    n = len(ends)
    sub = struct.pack(">7H", 4, 0, 0, 2 * n, 0, 0, 0) + struct.pack(f">{n}H", *ends) + b"\0\0"
    sub += struct.pack(f">{n}H", *starts) + struct.pack(f">{n}h", *deltas) + struct.pack(f">{n}H", *offsets)
    sub += struct.pack(f">{len(glyphs)}H", *glyphs)
    sub = sub[:2] + struct.pack(">H", len(sub)) + sub[4:]
    cmap = struct.pack(">HHHHI", 0, 1, 3, 1, 12) + sub
    return struct.pack(">IHHHH", 0x00010000, 1, 0, 0, 0) + struct.pack(">4sIII", b"cmap", 0, 28, len(cmap)) + cmap


def test_font_codepoints_reads_cmaps_exactly():
    assert font_codepoints(_font_with_cmap4()) == {ord(c) for c in "ABCxz"}
    font, codepoints = caption_font()
    assert {ord(c) for c in "A名Бλ한…"} <= codepoints and 0x1F600 not in codepoints and 0xF0000 not in codepoints
    with pytest.raises(ValueError, match="cmap"):
        font_codepoints(b"\0\1\0\0\0\0" + b"\0" * 6)  # an sfnt without tables


def test_fallback_font_is_used_and_says_so_when_the_font_package_is_missing(monkeypatch):
    import spotit.grid as grid

    def missing(name):
        raise ModuleNotFoundError(name)

    monkeypatch.setattr(grid.resources, "files", missing)
    with pytest.warns(UserWarning, match="fall back"):
        font, codepoints = grid.caption_font.__wrapped__()
    assert codepoints == frozenset(range(0x20, 0x7F))
    assert caption_lines(1, "名前", 0.5, None, TILE - 2 * PAD, font, codepoints)[0] == "#1 \\u540d\\u524d"


def test_fitted_caption_keeps_rank_and_score_and_cuts_whole_units_from_the_middle():
    font, codepoints = caption_font()
    width = TILE - 2 * PAD
    for name in SCRIPTS:
        first, second = caption_lines(12, name, 0.123456, 42, width, font, codepoints)
        assert first.startswith("#12 ") and second == "0.123  42 inliers"
        assert font.getlength(first) <= width and font.getlength(second) <= width
    first, _ = caption_lines(3, "x" * 200, 0.5, None, width, font, codepoints)
    assert first.startswith("#3 xxx") and first.endswith("xxx") and "…" in first
    units = display_units("😀" * 50, codepoints)
    head, tail = fit_text("#1 ", units, width, font).removeprefix("#1 ").split("…")
    assert head and tail and not (head + tail).replace("\\U0001f600", "")  # no escape is cut in two
    assert caption_lines(1, "short", 0.5, None, width, font, codepoints) == ["#1 short", "0.5"]


def _results(tmp_path, names):
    path = tmp_path / "photo.png"
    Image.fromarray(np.full((60, 90, 3), 128, np.uint8)).save(path)
    quad = np.array([[5.0, 5.0], [60.0, 5.0], [60.0, 50.0], [5.0, 50.0]])
    return [
        SimpleNamespace(id=name, path=str(path), score=0.9 - i / 100, inliers=30 - i, quad=quad if i % 2 else None)
        for i, name in enumerate(names)
    ]


def test_a_grid_is_as_wide_as_its_results_need(tmp_path):
    query = np.zeros((80, 80, 3), np.uint8)
    caption = caption_height()
    for results, shape in [(0, (1, 1)), (3, (1, 4)), (5, (1, 6)), (8, (2, 6))]:
        sheet = render_grid(query, [(10, 10, 40, 40)], _results(tmp_path, ["n"] * results))
        assert sheet.size == (shape[1] * TILE, shape[0] * (TILE + caption)), results


def test_a_caption_changes_no_pixel_outside_its_own_cell(tmp_path):
    """Change one result's name: only that result's caption box may change. Long names in the first row would
    spill right into the neighbour's caption, or down into the second row's tiles."""
    names = ["Привет", SCRIPTS[5], "名" * 40, "Ελληνικά " * 10, SCRIPTS[4] * 5, "한국어" * 20, "名前", "x", "y", "z"]
    query = np.zeros((80, 80, 3), np.uint8)
    base = np.asarray(render_grid(query, [(10, 10, 40, 40)], _results(tmp_path, ["n"] * len(names))))
    caption = caption_height()
    assert base.shape[0] == 2 * (TILE + caption)
    for i, name in enumerate(names):
        changed = ["n"] * len(names)
        changed[i] = name
        sheet = np.asarray(render_grid(query, [(10, 10, 40, 40)], _results(tmp_path, changed)))
        assert sheet.shape == base.shape
        cell = i + 1
        x0, y0 = (cell % 6) * TILE, (cell // 6) * (TILE + caption) + TILE
        diff = (sheet != base).any(axis=2)
        assert diff[y0 : y0 + caption, x0 : x0 + TILE].any(), name
        diff[y0 : y0 + caption, x0 : x0 + TILE] = False
        assert not diff.any(), f"caption of {name[:20]!r} reaches outside its cell at {np.argwhere(diff)[0]}"
        ink = (sheet[y0 : y0 + caption, x0 : x0 + TILE] < 200).any(axis=2)
        assert not ink[:, TILE - 2 :].any(), f"caption of {name[:20]!r} is cut at the tile's edge"
