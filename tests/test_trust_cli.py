"""Fault injection for what the CLI promises: outputs honour the umask and survive a closed pipe, unwritable
targets and options that cannot apply are one-line errors before any work, ids are unique, every input
is indexed with its true content or skipped with a reason, and the CLI explains itself."""

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spotit import Index
from spotit.cli import main
from spotit.search.ranking import read_ranklist
from spotit.search.searcher import Result

SPOTIT = [sys.executable, "-m", "spotit.cli"]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("spotit: error:"), err
    return err[0]


@pytest.fixture
def batch(demo, tmp_path):
    """The assignment's layout with two boxed queries."""
    queries, boxes = tmp_path / "query", tmp_path / "query_txt"
    queries.mkdir(), boxes.mkdir()
    for name in ("1", "2"):
        shutil.copy(demo["query"], queries / f"{name}.jpg")
        (boxes / f"{name}.txt").write_text(" ".join(map(str, demo["box"])) + "\n")
    return queries, boxes


# ---- the CLI explains itself -------------------------------------------------------------------------
def test_spotit_alone_prints_the_help_with_an_example(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "usage: spotit" in out and "quick start" in out and "spotit search" in out


@pytest.mark.parametrize("command", [["index"], ["search"], ["demo"], ["eval"], ["bench", "make-clutter"]])
def test_every_command_help_describes_it_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as stop:
        main([*command, "--help"])
    out = capsys.readouterr().out
    assert stop.value.code == 0 and "example" in out
    assert out.split("\n\n")[1].strip()  # a description paragraph after the usage


def test_rebuild_help_says_what_it_deletes(capsys):
    with pytest.raises(SystemExit):
        main(["index", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "deletes only spotit's own files" in help_text and "never the gallery" in help_text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["search", "QUERY", "--ranklist", "r.txt"], "--ranklist applies to batch mode only"),
        (["search", "QUERY", "--boxes", "BOXES"], "--boxes applies to batch mode only"),
        (["search", "QUERY", "--queries", "QUERIES"], "not both"),
        (["search", "--queries", "QUERIES", "--box", "1,2,3,4"], "--box applies to a single QUERY"),
        (["search", "--queries", "QUERIES", "--boxes", "MISSING"], "box folder not found"),
        (["search"], "give a QUERY"),
        (["search", "INDEX", "QUERY", "--box", "1,2,3,4"], "is a folder, not a photo: give an index with --index"),
        (["search", "QUERY", "--top", "0"], None),
    ],
)
def test_an_option_that_cannot_apply_is_an_error(demo_index, demo, batch, tmp_path, capsys, argv, message):
    queries, boxes = batch
    names = {"QUERY": str(demo["query"]), "QUERIES": str(queries), "BOXES": str(boxes), "MISSING": str(tmp_path / "missing"),
             "INDEX": str(demo_index.store.root)}
    argv = [names.get(a, a) for a in argv] + ["--index", str(demo_index.store.root)]
    if message is None:  # argparse's own refusal
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 2 and "at least 1" in capsys.readouterr().err
        return
    assert main(argv) == 2
    assert message in one_line_error(capsys)


def test_a_folder_that_is_no_index_says_how_to_make_one(demo, tmp_path, capsys):
    gallery = str(demo["gallery"])
    assert main(["search", str(demo["query"]), "--index", gallery]) == 2
    assert f"a folder of other files: give the folder that `spotit index` wrote the index to, or index this one " \
           f"with `spotit index {gallery} --index NEW_FOLDER`" in one_line_error(capsys)
    leftovers = tmp_path / "refused"  # what a refused first `spotit index` leaves is no "other files"
    leftovers.mkdir()
    (leftovers / "write.lock").touch()
    for folder in (tmp_path / "none", leftovers):
        assert main(["search", str(demo["query"]), "--index", str(folder)]) == 2
        assert f"build one with `spotit index GALLERY --index {folder}`" in one_line_error(capsys)


def test_a_box_with_negative_coordinates_needs_no_equals_sign(demo_index, demo, capsys):
    assert main(["search", str(demo["query"]), "--box", "-50,-40,200,150", "--index", str(demo_index.store.root),
                 "--json", "--method", "cnn"]) == 0
    assert json.loads(capsys.readouterr().out)["boxes"] == [[0, 0, 150, 110]]


def test_result_boxes_are_clipped_to_the_photo(demo_index, demo):
    quad = np.array([[-30.0, -10.0], [700.0, -10.0], [700.0, 500.0], [-30.0, 500.0]])
    assert Result("a", "a.jpg", 1.0, 20, quad, width=600, height=400).box == (0, 0, 600, 400)
    for hit in demo_index.search(demo["query"], [demo["box"]], top=10):
        if hit.box is not None:
            x, y, w, h = hit.box
            assert 0 <= x and 0 <= y and x + w <= hit.width and y + h <= hit.height


def test_a_moved_gallery_is_re_pointed_without_re_extracting(gallery_copy, tmp_path, capsys):
    index_dir = tmp_path / "idx"
    assert main(["index", str(gallery_copy), "--index", str(index_dir), "--method", "cnn", "--quiet"]) == 0
    moved = gallery_copy.rename(tmp_path / "moved-gallery")
    capsys.readouterr()
    assert main(["index", str(moved), "--index", str(index_dir), "--method", "cnn", "--quiet"]) == 2
    assert "--moved" in one_line_error(capsys)
    assert main(["index", str(moved), "--index", str(index_dir), "--method", "cnn", "--quiet", "--moved"]) == 0
    assert "0 added, 0 re-extracted, 0 removed, 20 unchanged" in capsys.readouterr().out
    hits = Index.open(index_dir).search(moved / "cat-1.jpg", top=3)
    assert hits[0].id == "cat-1" and hits[0].path == str(moved / "cat-1.jpg") and hits[0].stale is None


def test_results_whose_photo_was_deleted_or_changed_since_indexing_are_flagged(gallery_copy, tmp_path, capsys):
    index_dir = tmp_path / "idx"
    Index.create(index_dir, gallery_copy, ["cnn"]).update(progress=False)
    (gallery_copy / "cat-2.jpg").unlink()
    with open(gallery_copy / "cat-3.jpg", "ab") as photo:
        photo.write(b"\0")
    assert main(["search", str(gallery_copy / "cat-1.jpg"), "--index", str(index_dir), "--top", "20", "--json"]) == 0
    stale = {r["id"]: r.get("stale") for r in json.loads(capsys.readouterr().out)["results"]}
    assert stale["cat-2"] == "deleted" and stale["cat-3"] == "changed" and stale["cat-1"] is None
    assert main(["search", str(gallery_copy / "cat-1.jpg"), "--index", str(index_dir), "--top", "20"]) == 0
    assert "cat-2  " in (out := capsys.readouterr().out) and "(deleted since indexing)" in out


def test_a_hybrid_index_serves_regional_without_re_extracting(demo_index, demo, tmp_path, capsys):
    index_dir = tmp_path / "idx"
    shutil.copytree(demo_index.store.root, index_dir)
    assert main(["index", str(demo["gallery"]), "--index", str(index_dir), "--method", "regional", "--quiet"]) == 0
    assert "0 added, 0 re-extracted" in capsys.readouterr().out
    hits = Index.open(index_dir).search(demo["query"], [demo["box"]], method="regional", top=3)
    assert {h.id for h in hits} == set(demo["relevant"])


# ---- ids are unique, the rank list parses whatever the names ---------------------------------------------
def test_ids_are_unique_and_the_rank_list_parses_whatever_the_file_names(noise_image, tmp_path, batch, capsys):
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    names = ["photo.jpg", "photo.png", "a, b.jpg", 'say "cheese".jpg', "x: y.jpg", "plain.jpg"]
    for seed, name in enumerate(names):
        noise_image(gallery / name, seed=seed)
    index_dir = tmp_path / "idx"
    assert main(["index", str(gallery), "--index", str(index_dir), "--method", "cnn", "--quiet"]) == 0
    queries, boxes = batch
    ranklist = tmp_path / "ranks.txt"
    capsys.readouterr()
    assert main(["search", "--queries", str(queries), "--boxes", str(boxes), "--index", str(index_dir),
                 "--ranklist", str(ranklist)]) == 0
    ranking = read_ranklist(ranklist)
    expected = {"photo.jpg", "photo.png", "a, b", 'say "cheese"', "x: y", "plain"}
    assert set(ranking) == {"1", "2"} and all(sorted(ids) == sorted(expected) for ids in ranking.values())


def test_query_names_stay_unique_in_batch_mode(demo_index, demo, tmp_path, capsys):
    queries = tmp_path / "query"
    queries.mkdir()
    shutil.copy(demo["query"], queries / "1.jpg")
    Image.open(demo["query"]).save(queries / "1.png")
    assert main(["search", "--queries", str(queries), "--index", str(demo_index.store.root), "--method", "cnn",
                 "--ranklist", str(tmp_path / "r.txt")]) == 0
    assert set(read_ranklist(tmp_path / "r.txt")) == {"1.jpg", "1.png"}


# ---- outputs ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_every_output_honours_the_umask(demo, batch, tmp_path, capsys, umask, mode):
    queries, boxes = batch
    old = os.umask(umask)
    try:
        index_dir = tmp_path / "idx"
        assert main(["index", str(demo["gallery"]), "--index", str(index_dir), "--method", "hybrid", "--quiet"]) == 0
        assert main(["search", "--queries", str(queries), "--boxes", str(boxes), "--index", str(index_dir),
                     "--ranklist", str(tmp_path / "r.txt"), "--grid", str(tmp_path / "grids")]) == 0
        assert main(["search", str(demo["query"]), "--index", str(index_dir), "--grid", str(tmp_path / "one.png")]) == 0
    finally:
        os.umask(old)
    outputs = [tmp_path / "r.txt", tmp_path / "one.png", *(tmp_path / "grids").iterdir(),
               *(p for p in index_dir.rglob("*") if p.is_file() and p.name != "write.lock")]
    assert len(outputs) >= 7
    assert {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode)) for p in outputs} == \
        {str(p.relative_to(tmp_path)): oct(mode) for p in outputs}


def test_a_closed_output_pipe_never_loses_the_rank_list(demo_index, batch, tmp_path):
    queries, boxes = batch
    ranklist = tmp_path / "r.txt"
    process = subprocess.Popen([*SPOTIT, "search", "--queries", str(queries), "--boxes", str(boxes), "--method", "cnn",
                                "--index", str(demo_index.store.root), "--ranklist", str(ranklist)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stdout.close()  # as `| head -0` would: the first line printed meets a closed pipe
    err = process.stderr.read()
    assert process.wait(timeout=300) == 0, err
    assert "Traceback" not in err and "BrokenPipeError" not in err
    assert set(read_ranklist(ranklist)) == {"1", "2"}


@pytest.mark.parametrize(
    "extra, message",
    [
        (["QUERY", "--grid", "AFILE/grid.png"], "cannot write --grid"),
        (["QUERY", "--grid", "FOLDER"], "is a folder"),
        (["QUERY", "--grid", "/proc/spotit-grid.png"], "cannot write --grid"),
        (["--queries", "QUERIES", "--ranklist", "FOLDER"], "is a folder"),
        (["--queries", "QUERIES", "--ranklist", "AFILE/r.txt"], "cannot write --ranklist"),
        (["--queries", "QUERIES", "--grid", "AFILE"], "is a file, not a folder"),
        (["QUERY", "--grid", "MISSING/grid.png"], "there is no folder"),  # as `>`: a mistyped folder is not made
        (["--queries", "QUERIES", "--ranklist", "MISSING/r.txt"], "there is no folder"),
    ],
)
def test_an_unwritable_target_is_a_one_line_error_before_any_work(demo, batch, tmp_path, capsys, extra, message):
    afile = tmp_path / "afile"
    afile.write_text("x")
    names = {"QUERY": str(demo["query"]), "QUERIES": str(batch[0]), "FOLDER": str(tmp_path), "AFILE": str(afile)}
    argv = ["search", *[names.get(a, a.replace("AFILE", str(afile)).replace("MISSING", str(tmp_path / "missing")))
                        for a in extra]]
    # no index exists here: an error about the target proves it came before any work
    assert main([*argv, "--index", str(tmp_path / "no-index")]) == 2
    assert message in one_line_error(capsys)
    assert not (tmp_path / "missing").exists()


# ---- inputs ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_indexing_a_gallery_with_special_files_and_deep_images_never_blocks(noise_image, tmp_path):
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    noise_image(gallery / "ok.jpg")
    ramp = (np.arange(96 * 128, dtype=np.uint32).reshape(96, 128) * 5).astype(np.uint16)
    Image.fromarray(ramp).save(gallery / "deep.png")  # 16-bit greyscale
    os.mkfifo(gallery / "pipe.jpg")
    os.symlink("loop-b.jpg", gallery / "loop-a.jpg")
    os.symlink("loop-a.jpg", gallery / "loop-b.jpg")
    result = subprocess.run([*SPOTIT, "index", str(gallery), "--index", str(tmp_path / "idx"), "--method", "cnn", "--quiet"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "2 added" in result.stdout
    assert "pipe.jpg: not a regular file (fifo)" in result.stdout and "loop-a.jpg: symlink loop" in result.stdout
    assert Index.open(tmp_path / "idx").search(gallery / "deep.png", top=1)[0].id == "deep"


def test_images_over_the_pixel_limit_are_skipped_with_the_reason(gallery_copy, tmp_path, capsys):
    assert main(["index", str(gallery_copy), "--index", str(tmp_path / "idx"), "--method", "cnn", "--quiet",
                 "--max-pixels", "1000"]) == 0
    out = capsys.readouterr().out
    assert "0 added" in out and "skipped 20 file(s)" in out and "over the limit" in out


def test_the_exported_model_in_the_cache_honours_the_umask(demo_index, model_cache):
    from spotit.fileio import current_umask

    models = list((model_cache / "models").glob("*.onnx"))
    assert models and all(stat.S_IMODE(p.stat().st_mode) == 0o666 & ~current_umask() for p in models)


def test_outputs_are_written_through_symlinks_fifos_and_hard_links(demo_index, batch, tmp_path):
    queries, boxes = batch
    real = tmp_path / "real.txt"
    real.write_text("old")
    real.chmod(0o640)
    (tmp_path / "link.txt").symlink_to(real)
    os.link(real, tmp_path / "hard.txt")
    base = ["search", "--queries", str(queries), "--boxes", str(boxes), "--index", str(demo_index.store.root),
            "--method", "cnn", "--quiet", "--ranklist"]
    assert main([*base, str(tmp_path / "link.txt")]) == 0
    assert (tmp_path / "link.txt").is_symlink() and set(read_ranklist(real)) == {"1", "2"}
    assert stat.S_IMODE(real.stat().st_mode) == 0o640  # an existing file keeps its mode, as with `>`
    real.write_text("old")
    assert main([*base, str(tmp_path / "hard.txt")]) == 0
    assert real.stat().st_nlink == 2 and set(read_ranklist(real)) == {"1", "2"}
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    import threading

    reader = threading.Thread(target=lambda: received.append(fifo.read_text()))
    reader.start()
    assert main([*base, str(fifo)]) == 0
    reader.join(timeout=60)
    assert stat.S_ISFIFO(fifo.stat().st_mode) and received and received[0].startswith("Q1: ")
    (tmp_path / "grids").symlink_to(tmp_path / "made" / "grids")  # a batch's --grid folder through a link: made
    assert main([*base, str(tmp_path / "r.txt"), "--grid", str(tmp_path / "grids")]) == 0
    assert sorted(p.name for p in (tmp_path / "made" / "grids").iterdir()) == ["1.png", "2.png"]


def test_demo_into_an_unwritable_place_is_a_one_line_error(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out in (afile / "sub", Path("/proc/spotit-demo")):
        assert main(["demo", "--out", str(out), "--quiet"]) == 2
        one_line_error(capsys)


def test_a_box_file_is_found_by_the_query_stem_when_names_clash(demo_index, demo, tmp_path, capsys):
    queries, boxes = tmp_path / "query", tmp_path / "query_txt"
    queries.mkdir(), boxes.mkdir()
    shutil.copy(demo["query"], queries / "1.jpg")
    Image.open(demo["query"]).save(queries / "1.png")
    (boxes / "1.txt").write_text(" ".join(map(str, demo["box"])) + "\n")
    assert main(["search", "--queries", str(queries), "--boxes", str(boxes), "--index", str(demo_index.store.root),
                 "--method", "cnn", "--ranklist", str(tmp_path / "r.txt"), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert [q["boxes"] for q in payload["queries"]] == [[list(demo["box"])]] * 2


def test_a_symlinked_folder_is_reported_not_silently_left_out(gallery_copy, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (gallery_copy / "linked").symlink_to(elsewhere)
    assert main(["index", str(gallery_copy), "--index", str(tmp_path / "idx"), "--method", "cnn", "--quiet"]) == 0
    assert "linked: symlinked folder, not followed" in capsys.readouterr().out


def test_moved_is_refused_where_it_cannot_apply(gallery_copy, tmp_path, capsys):
    assert main(["index", str(gallery_copy), "--index", str(tmp_path / "new"), "--moved", "--quiet"]) == 2
    assert "holds no index yet" in one_line_error(capsys)


def test_importing_spotit_loads_no_heavy_module_so_an_early_ctrl_c_is_answered_in_one_line():
    probe = "import sys, spotit._main; print(sorted({'numpy', 'h5py', 'cv2', 'torch'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip() == "[]"
