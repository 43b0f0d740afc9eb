import json
import shlex
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from spotit.cli import main
from spotit.search.ranking import read_ranklist


@pytest.fixture
def built(demo, tmp_path, capsys):
    """A CLI-built index of the demo gallery."""
    index = tmp_path / "idx"
    assert main(["index", str(demo["gallery"]), "--index", str(index), "--method", "all", "--quiet"]) == 0
    capsys.readouterr()
    return index


def test_index_command_reports_counts_speed_and_time(demo, tmp_path, capsys):
    assert main(["index", str(demo["gallery"]), "--index", str(tmp_path / "idx"), "--method", "cnn", "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert "20 images (cnn" in out and "20 added" in out and "images/s" in out
    assert err.strip().splitlines()[-1].startswith("index took")
    assert main(["index", str(demo["gallery"]), "--index", str(tmp_path / "idx"), "--method", "cnn", "--quiet"]) == 0
    assert "0 added, 0 re-extracted, 0 removed, 20 unchanged" in capsys.readouterr().out


def test_index_command_lists_skipped_files(gallery_copy, tmp_path, capsys):
    (gallery_copy / "broken.jpg").write_text("oops")
    assert main(["index", str(gallery_copy), "--index", str(tmp_path / "idx"), "--method", "cnn", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "skipped 1 file(s):" in out and "broken.jpg: not an image" in out


def test_search_prints_top_k_and_json(demo, built, capsys):
    box = ",".join(map(str, demo["box"]))
    assert main(["search", str(demo["query"]), "--box", box, "--index", str(built), "--top", "3"]) == 0
    out, err = capsys.readouterr()
    assert sum(rel in out for rel in demo["relevant"]) == 3 and "search took" in err
    assert main(["search", str(demo["query"]), "--box", box, "--index", str(built), "--json", "--method", "sift"]) == 0
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert payload["method"] == "sift" and len(payload["results"]) == 10
    assert {r["id"] for r in payload["results"][:3]} == set(demo["relevant"])
    assert set(payload["results"][0]) == {"id", "path", "score"}


def test_search_writes_grid_png(demo, built, tmp_path, capsys):
    grid = tmp_path / "grid.png"
    assert main(["search", str(demo["query"]), "--box", "30,0,460,390", "--index", str(built), "--grid", str(grid)]) == 0
    with Image.open(grid) as picture:
        assert picture.format == "PNG" and picture.width >= 6 * 200 and picture.height >= 2 * 200


def test_batch_mode_writes_full_rank_list_in_assignment_format(demo, built, tmp_path, capsys):
    queries, boxes = tmp_path / "query", tmp_path / "query_txt"
    queries.mkdir(), boxes.mkdir()
    shutil.copy(demo["query"], queries / "1.jpg")
    (boxes / "1.txt").write_text("30 0 460 390\n")
    shutil.copy(demo["gallery"] / "cat-1.jpg", queries / "2.jpg")
    (boxes / "2.txt").write_text("10 10 200 150\n20 30 100 100\n")
    ranklist = tmp_path / "rankList.txt"
    code = main(["search", "--queries", str(queries), "--boxes", str(boxes), "--index", str(built), "--ranklist", str(ranklist)])
    assert code == 0
    out = capsys.readouterr().out
    assert "Q1 (hybrid):" in out and "Q2 (hybrid):" in out
    lines = ranklist.read_text().splitlines()
    assert lines[0].startswith("Q1: ") and lines[1].startswith("Q2: ")
    ranking = read_ranklist(ranklist)
    gallery_ids = sorted(p.stem for p in demo["gallery"].iterdir())
    assert sorted(ranking["1"]) == gallery_ids and sorted(ranking["2"]) == gallery_ids
    assert set(ranking["1"][:3]) == set(demo["relevant"])


def test_batch_mode_skips_a_query_with_a_bad_box_and_keeps_the_others(demo, built, tmp_path, capsys):
    queries, boxes = tmp_path / "query", tmp_path / "query_txt"
    queries.mkdir(), boxes.mkdir()
    shutil.copy(demo["query"], queries / "good.jpg")
    (boxes / "good.txt").write_text("30 0 460 390\n")
    shutil.copy(demo["query"], queries / "bad.jpg")
    (boxes / "bad.txt").write_text("30 0 0 390\n")
    code = main(["search", "--queries", str(queries), "--boxes", str(boxes), "--index", str(built), "--ranklist", str(tmp_path / "r.txt")])
    assert code == 1
    err = capsys.readouterr().err
    assert "bad.jpg" in err and "zero or negative size" in err
    assert list(read_ranklist(tmp_path / "r.txt")) == ["good"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["search", "QUERY", "--box", "1,2,3"], "must be four numbers"),
        (["search", "QUERY", "--box", "0,0,0,10"], "zero or negative size"),
        (["search", "QUERY", "--box", "9000,0,10,10"], "outside the 600x400 image"),
        (["search", "QUERY", "--index", "MISSING"], "spotit index GALLERY"),
        (["search", "MISSING.jpg"], "no such file"),
        (["index", "MISSING"], "gallery folder not found"),
    ],
)
def test_bad_input_gives_one_line_error_and_exit_code_2(demo, built, tmp_path, capsys, argv, message):
    argv = [str(demo["query"]) if a == "QUERY" else str(tmp_path / a) if a.startswith("MISSING") else a for a in argv]
    if argv[0] == "search" and "--index" not in argv:
        argv += ["--index", str(built)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("spotit: error:") and message in err[0]


def test_command_line_entry_point_prints_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "spotit.cli", "search", str(tmp_path / "q.jpg"), "--index", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr and "spotit index GALLERY" in result.stderr


def test_demo_command_finds_the_cup_and_writes_the_grid(tmp_path, capsys, monkeypatch):
    assert main(["demo", "--out", str(tmp_path / "my demo"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "3 of the 3 photos with the pasted cup are in the top 3" in out
    assert (tmp_path / "my demo" / "demo-grid.png").stat().st_size > 10_000
    # the search it suggests runs as printed (quoted for the shell)
    suggested = shlex.split(out.split("search it yourself: ", 1)[1].splitlines()[0])
    monkeypatch.chdir(tmp_path)
    assert suggested[0] == "spotit" and main([*suggested[1:], "--quiet"]) == 0
    assert "cup-" in capsys.readouterr().out and (tmp_path / "grid.png").is_file()
