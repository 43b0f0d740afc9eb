"""Fault injection for the index's promises: it writes only where it owns the folder, readers never fail
because of a writer, one writer at a time, and an interruption keeps every finished photo."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import edit_state
from PIL import Image

from spotit import Index, SpotitError
from spotit.cli import main
from spotit.storage.catalogue import SIDE_FILES
from spotit.storage.lock import WriterLock
from spotit.storage.store import MANIFEST, Store

SPOTIT = [sys.executable, "-m", "spotit.cli"]


def tree_state(root: Path) -> dict:
    """Every file under root with its size and modification time: equal states mean nothing was written.
    SQLite's write-ahead log and its shared-memory index are left out: any reader of a WAL database makes
    them, and they hold no data of the index (a read-only folder is read without them)."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")
            if p.name not in SIDE_FILES}


def write_photos(folder: Path, count: int, size=(480, 640), seed=0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        base = rng.integers(0, 255, (size[0] // 16, size[1] // 16, 3), dtype=np.uint8)
        Image.fromarray(base).resize(size[::-1], Image.BILINEAR).save(folder / f"p{i:03d}.jpg", quality=90)
    return folder


# ---- spotit writes only where it owns the folder ----------------------------------------------------
def test_a_folder_with_user_files_is_refused_as_index_and_left_untouched(demo, tmp_path, capsys, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.txt").write_text("years of work")
    before = tree_state(home)
    monkeypatch.chdir(home)
    for extra in ([], ["--rebuild"]):
        assert main(["index", str(demo["gallery"]), "--index", ".", "--quiet", *extra]) == 2
        assert "is not a spotit index and is not empty" in capsys.readouterr().err
    assert tree_state(home) == before


def test_a_foreign_manifest_json_does_not_make_a_folder_spotits(demo, tmp_path, capsys):
    web = tmp_path / "webapp"
    web.mkdir()
    (web / MANIFEST).write_text(json.dumps({"name": "my app", "icons": []}))
    (web / "index.html").write_text("<html></html>")
    before = tree_state(web)
    assert main(["index", str(demo["gallery"]), "--index", str(web), "--rebuild", "--quiet"]) == 2
    assert "not a spotit index" in capsys.readouterr().err
    assert main(["search", str(demo["query"]), "--index", str(web)]) == 2
    assert "not a spotit index" in capsys.readouterr().err
    assert tree_state(web) == before


def test_rebuild_removes_only_spotits_own_files(gallery_copy, tmp_path, capsys, monkeypatch):
    index_dir = tmp_path / "idx"
    assert main(["index", str(gallery_copy), "--index", str(index_dir), "--method", "cnn", "--quiet"]) == 0
    (index_dir / "my-notes.txt").write_text("keep me")  # a user's file that ended up in the index folder
    (index_dir / "shards" / "keep.h5").write_text("not a shard of spotit's naming")
    monkeypatch.chdir(index_dir)  # `--index .`: rebuilding the folder one stands in
    assert main(["index", str(gallery_copy), "--index", ".", "--method", "cnn", "--rebuild", "--quiet"]) == 0
    assert "20 added" in capsys.readouterr().out
    assert (index_dir / "my-notes.txt").read_text() == "keep me"
    assert (index_dir / "shards" / "keep.h5").is_file()
    assert len(Index.open(index_dir)) == 20


def test_an_existing_file_or_unwritable_place_as_index_is_a_one_line_error(demo, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for target in (afile, afile / "idx", Path("/proc/spotit-test-index")):
        assert main(["index", str(demo["gallery"]), "--index", str(target), "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("spotit: error:"), err
    assert afile.read_text() == "x"


def test_demo_refuses_a_folder_that_is_not_a_demo(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "mine.jpg").write_text("a user's photo")
    assert main(["demo", "--out", str(tmp_path / "photos"), "--quiet"]) == 2
    assert "not a spotit demo folder" in capsys.readouterr().err
    assert (tmp_path / "photos" / "mine.jpg").read_text() == "a user's photo"


# ---- one writer ------------------------------------------------------------------------------------
HOLD_LOCK = """
import sys, time
from spotit.storage.lock import WriterLock
lock = WriterLock(sys.argv[1]).acquire()
print("holding", flush=True)
time.sleep(float(sys.argv[2]))
"""


def hold_lock(index_dir: Path, seconds: float) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(index_dir), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "holding"
    return holder


def test_a_second_writer_is_refused_at_once_naming_the_first_and_a_killed_one_leaves_no_lock(gallery_copy, tmp_path, capsys):
    index_dir = tmp_path / "idx"
    Index.create(index_dir, gallery_copy, ["cnn"])
    holder = hold_lock(index_dir, 60)
    try:
        started = time.monotonic()
        assert main(["index", str(gallery_copy), "--index", str(index_dir), "--method", "cnn", "--quiet"]) == 2
        assert time.monotonic() - started < 5
        err = capsys.readouterr().err
        assert "is being updated by" in err and f"pid {holder.pid}" in err and "--wait" in err
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the kernel released the dead writer's lock: no stale lock to clean up by hand
    assert main(["index", str(gallery_copy), "--index", str(index_dir), "--method", "cnn", "--quiet"]) == 0
    assert "20 added" in capsys.readouterr().out


def test_wait_waits_for_the_running_writer(gallery_copy, tmp_path):
    index_dir = tmp_path / "idx"
    index = Index.create(index_dir, gallery_copy, ["cnn"])
    holder = hold_lock(index_dir, 2)
    started = time.monotonic()
    report = index.update(progress=False, wait=True)
    assert time.monotonic() - started >= 1 and report.added == 20
    holder.wait()


def test_two_index_commands_at_once_extract_each_photo_once(gallery_copy, tmp_path):
    index_dir = tmp_path / "idx"
    command = [*SPOTIT, "index", str(gallery_copy), "--index", str(index_dir), "--method", "cnn", "--quiet", "--wait"]
    first, second = (subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(2))
    outs = [p.communicate(timeout=300)[0] for p in (first, second)]
    assert first.returncode == second.returncode == 0
    added = sorted(int(re.search(r"(\d+) added", out).group(1)) for out in outs)
    assert added == [0, 20]
    assert len(Index.open(index_dir)) == 20 and len(list((index_dir / "shards").iterdir())) == 1


# ---- readers never fail because of a writer, and never write -----------------------------------------
SEARCH_LOOP = """
import json, os, sys
from spotit import Index
index = Index.open(sys.argv[1])
sizes, errors = set(), []
while not os.path.exists(sys.argv[3]):
    try:
        sizes.add(len(index.search(sys.argv[2], top=None)))
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
print(json.dumps({"sizes": sorted(sizes), "errors": errors[:5]}), flush=True)
"""


@pytest.mark.slow
def test_searches_in_other_processes_and_threads_never_fail_during_updates_and_compaction(gallery_copy, tmp_path):
    index_dir = tmp_path / "idx"
    index = Index.create(index_dir, gallery_copy, ["hybrid"])
    index.update(progress=False)
    aside = tmp_path / "aside"
    aside.mkdir()
    moving = sorted(gallery_copy.iterdir())[:12]
    query = str(gallery_copy / "cat-1.jpg")
    stop = tmp_path / "stop"
    reader = subprocess.Popen([sys.executable, "-c", SEARCH_LOOP, str(index_dir), query, str(stop)], stdout=subprocess.PIPE, text=True)
    thread_errors, thread_sizes, done = [], set(), threading.Event()

    def search_in_thread():
        mine = Index.open(index_dir)
        while not done.is_set():
            try:
                thread_sizes.add(len(mine.search(query, method="regional", top=None)))
            except Exception as exc:  # noqa: BLE001 - any failure is what this test looks for
                thread_errors.append(f"{type(exc).__name__}: {exc}")

    thread = threading.Thread(target=search_in_thread)
    thread.start()
    try:
        for _ in range(2):  # remove 12 of 20 (a compaction), then bring them back, twice
            for path in moving:
                if path.name != "cat-1.jpg":
                    shutil.move(path, aside / path.name)
            writer = Index.open(index_dir)
            writer.update(progress=False)
            for path in aside.iterdir():
                shutil.move(path, gallery_copy / path.name)
            writer.update(progress=False)
    finally:
        done.set()
        stop.touch()
        thread.join()
    other_process = json.loads(reader.communicate(timeout=120)[0])
    assert not thread_errors, thread_errors[:3]
    assert not other_process["errors"], other_process["errors"]
    # every search saw one committed state: the whole gallery, or the 9 photos left while 11 were away
    assert thread_sizes <= {9, 20} and 20 in thread_sizes
    assert set(other_process["sizes"]) <= {9, 20} and other_process["sizes"]


def test_a_search_whose_state_is_removed_mid_way_retries_on_the_new_state(gallery_copy, tmp_path, monkeypatch):
    """Deterministic form of the race above: a writer commits and deletes the files of the state a search holds."""
    from spotit.search.searcher import Searcher

    index_dir = tmp_path / "idx"
    Index.create(index_dir, gallery_copy, ["hybrid"]).update(progress=False)
    reader = Index.open(index_dir)
    real_search, calls = Searcher.search, []

    def writer_strikes_first(self, snap, *args, **kwargs):
        calls.append(len(snap.names))
        if len(calls) == 1:  # between taking the snapshot and reading it: remove 11 photos, compact, clean up
            for path in sorted(gallery_copy.iterdir())[:11]:
                path.unlink()
            Index.open(index_dir).update(progress=False)
        return real_search(self, snap, *args, **kwargs)

    monkeypatch.setattr(Searcher, "search", writer_strikes_first)
    hits = reader.search(gallery_copy / "scene-8.jpg", top=None)  # not among the 11 removed
    assert calls == [20, 9] and len(hits) == 9


def test_search_never_writes_into_the_index_even_without_derived_data(demo, demo_index, tmp_path):
    index_dir = tmp_path / "idx"
    shutil.copytree(demo_index.store.root, index_dir)
    derived = list((index_dir / "shards").glob("*.w*.npy"))
    assert derived
    for path in derived:  # as an update interrupted before it derived them could leave it
        path.unlink()
    before = tree_state(index_dir)
    hits = Index.open(index_dir).search(demo["query"], [demo["box"]], top=3)
    assert {h.id for h in hits} == set(demo["relevant"])
    assert tree_state(index_dir) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits")
def test_a_read_only_index_serves_searches(demo, demo_index, tmp_path):
    index_dir = tmp_path / "idx"
    shutil.copytree(demo_index.store.root, index_dir)
    for path in [index_dir, *index_dir.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        hits = Index.open(index_dir).search(demo["query"], [demo["box"]], top=3)
        assert {h.id for h in hits} == set(demo["relevant"])
        with pytest.raises(SpotitError, match="cannot update the index"):
            Index.open(index_dir).update(progress=False)
    finally:
        for path in [index_dir, *index_dir.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)


def test_a_long_lived_index_sees_each_update(gallery_copy, tmp_path):
    index_dir = tmp_path / "idx"
    Index.create(index_dir, gallery_copy, ["cnn"]).update(progress=False)
    searcher = Index.open(index_dir)
    assert len(searcher.search(gallery_copy / "cat-1.jpg", top=None)) == 20
    (gallery_copy / "cat-2.jpg").unlink()
    Index.open(index_dir).update(progress=False)
    assert len(searcher.search(gallery_copy / "cat-1.jpg", top=None)) == 19


# ---- an interruption keeps every finished photo -------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_index_command_keeps_every_finished_photo(tmp_path, sig):
    gallery = write_photos(tmp_path / "gallery", 150)
    index_dir = tmp_path / "idx"
    process = subprocess.Popen([*SPOTIT, "index", str(gallery), "--index", str(index_dir), "--method", "cnn"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        seen += os.read(process.stderr.fileno(), 4096)
        counts = [int(n) for n in re.findall(rb"(\d+)/150", seen)]
        if counts and max(counts) >= 5:
            break
    process.send_signal(sig)
    _, err = process.communicate(timeout=60)
    err = (seen + err).decode()
    assert process.returncode == 130, err
    saved = int(re.search(r"interrupted: (\d+) images? saved", err).group(1))
    assert 5 <= saved < 150 and "Traceback" not in err
    assert len(Store.open(index_dir).images) == saved
    assert "added" in subprocess.run([*SPOTIT, "index", str(gallery), "--index", str(index_dir), "--method", "cnn", "--quiet"],
                                     capture_output=True, text=True, check=True).stdout
    assert len(Store.open(index_dir).images) == 150


def test_writer_lock_is_exclusive_between_two_holders_in_one_process(tmp_path):
    first = WriterLock(tmp_path).acquire()
    with pytest.raises(SpotitError, match="being updated"):
        WriterLock(tmp_path).acquire()
    first.release()
    WriterLock(tmp_path).acquire().release()


def test_updates_never_delete_user_files_that_look_like_spotits(gallery_copy, tmp_path):
    index_dir = tmp_path / "idx"
    Index.create(index_dir, gallery_copy, ["hybrid"]).update(progress=False)
    lookalikes = [index_dir / ".notes.tmp", index_dir / "regions-whitened.npz", index_dir / "regions-whitened-999.npz",
                  index_dir / "shards" / "123456.h5", index_dir / "shards" / ".backup.tmp"]
    for path in lookalikes:
        path.write_text("a user's file")
    (gallery_copy / "cat-1.jpg").unlink()
    Index.open(index_dir).update(progress=False)
    Index.open_or_create(index_dir, gallery_copy, ["hybrid"], rebuild=True).update(progress=False)
    assert all(path.read_text() == "a user's file" for path in lookalikes)
    assert len(list((index_dir / "shards").glob("0*.h5"))) == 1  # spotit's own old shards are gone


def test_a_gallery_name_that_is_not_utf8_is_indexed_like_any_other(noise_image, tmp_path):
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    noise_image(gallery / "plain.jpg", seed=1)
    odd = os.fsdecode(b"bad\xff\xfe.jpg")
    noise_image(gallery / odd, seed=2)
    index = Index.create(tmp_path / "idx", gallery, ["cnn"])
    assert index.update(progress=False).added == 2
    hits = index.search(gallery / odd, top=None)
    assert hits[0].id == os.fsdecode(b"bad\xff\xfe") and len(hits) == 2
    json.dumps([h.to_dict() for h in hits])  # the JSON output escapes it


def test_searches_keep_working_during_a_rebuild_with_the_same_settings(gallery_copy, tmp_path):
    index_dir = tmp_path / "idx"
    Index.create(index_dir, gallery_copy, ["cnn"]).update(progress=False)
    reader = Index.open(index_dir)
    rebuilding = Index.open_or_create(index_dir, gallery_copy, ["cnn"], rebuild=True)
    assert len(reader.search(gallery_copy / "cat-1.jpg", top=None)) == 20  # old features, until replaced
    assert rebuilding.update(progress=False).updated == 20


def test_a_long_lived_index_follows_a_moved_or_rebuilt_index(gallery_copy, tmp_path, demo):
    index_dir = tmp_path / "idx"
    Index.create(index_dir, gallery_copy, ["cnn"]).update(progress=False)
    reader = Index.open(index_dir)
    assert len(reader.search(gallery_copy / "cat-1.jpg", top=None)) == 20
    moved = gallery_copy.rename(tmp_path / "moved")
    Index.open_or_create(index_dir, moved, ["cnn"], moved=True).update(progress=False)
    assert reader.search(moved / "cat-1.jpg", top=1)[0].path == str(moved / "cat-1.jpg")
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(moved / "cat-1.jpg", other / "only.jpg")
    Index.open_or_create(index_dir, other, ["hybrid"], rebuild=True).update(progress=False)
    assert [h.id for h in reader.search(other / "only.jpg", top=None)] == ["only"]


@pytest.mark.parametrize("bad, message", [
    ({"boxes": [(1, 2, 3)]}, "four numbers"),
    ({"boxes": ["1,,2,3,4"]}, "four numbers"),
    ({"boxes": [(float("nan"), 0, 5, 5)]}, "non-finite"),
    ({"top": 0}, "at least 1"),
    ({"top": 2.5}, "at least 1"),
    ({"query": np.zeros((0, 0, 3), np.uint8)}, "too small"),
    ({"query": np.zeros((20, 20, 2), np.uint8)}, "HxWx3"),
])
def test_bad_python_api_arguments_raise_spotit_error(demo, demo_index, bad, message):
    arguments = {"query": demo["query"], **bad}
    with pytest.raises(SpotitError, match=message):
        demo_index.search(**arguments)


def test_python_api_accepts_one_box_alone_float_boxes_and_any_array_depth(demo, demo_index):
    from spotit.images import load_image

    image = load_image(demo["query"])
    expected = [h.id for h in demo_index.search(image, [demo["box"]], method="cnn", top=3)]
    assert [h.id for h in demo_index.search(image, tuple(demo["box"]), method="cnn", top=3)] == expected
    assert [h.id for h in demo_index.search(image, [[v + 0.2 for v in demo["box"]]], method="cnn", top=3)] == expected
    as_float = image.astype(np.float32) / 255
    assert [h.id for h in demo_index.search(as_float, [demo["box"]], method="cnn", top=3)] == expected
    as_16_bit = image.astype(np.uint16) * 257
    assert [h.id for h in demo_index.search(as_16_bit, [demo["box"]], method="cnn", top=3)] == expected


@pytest.mark.parametrize("methods", ["hybrid", ("nope",), ()])
def test_index_methods_are_checked_before_anything_is_written(gallery_copy, tmp_path, methods):
    if methods == "hybrid":  # a single name is one method, not a list of letters
        assert Index.create(tmp_path / "idx", gallery_copy, methods).methods_built == ["hybrid"]
        return
    with pytest.raises(SpotitError, match="unknown method"):
        Index.create(tmp_path / "idx", gallery_copy, methods)
    assert not (tmp_path / "idx").exists()


def test_a_refused_creation_leaves_no_trap(gallery_copy, tmp_path):
    with pytest.raises(SpotitError, match="gallery folder not found"):
        Index.create(tmp_path / "idx", tmp_path / "missing")
    (tmp_path / "idx").mkdir()
    (tmp_path / "idx" / "write.lock").write_text("")  # what an older refused creation could leave
    assert Index.create(tmp_path / "idx", gallery_copy, ["cnn"]).update(progress=False).added == 20


@pytest.mark.slow
def test_a_second_ctrl_c_while_saving_does_not_abort(tmp_path):
    gallery = write_photos(tmp_path / "gallery", 80)
    process = subprocess.Popen([*SPOTIT, "index", str(gallery), "--index", str(tmp_path / "idx"), "--method", "cnn"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not re.search(rb"\b([5-9]|\d\d)/80", seen):
        seen += os.read(process.stderr.fileno(), 4096)
    process.send_signal(signal.SIGINT)
    time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    err = (seen + err).decode()
    assert process.returncode == 130 and "FATAL" not in err and "terminate called" not in err, err
    assert len(Store.open(tmp_path / "idx").images) >= 5


def test_a_method_being_added_is_served_only_once_every_photo_has_it(gallery_copy, tmp_path, demo):
    index_dir = tmp_path / "idx"
    Index.create(index_dir, gallery_copy, ["cnn"]).update(progress=False)
    adding = Index.open_or_create(index_dir, gallery_copy, ["hybrid"])
    reader = Index.open(index_dir)
    assert reader.methods == ["cnn"] and len(reader.search(demo["query"], top=None)) == 20  # mid-update: cnn serves
    adding.update(progress=False)
    assert "hybrid" in Index.open(index_dir).methods
    assert {h.id for h in reader.search(demo["query"], [demo["box"]], method="hybrid", top=3)} == set(demo["relevant"])


def test_a_folder_with_another_tools_write_lock_is_not_taken(demo, tmp_path):
    folder = tmp_path / "theirs"
    folder.mkdir()
    (folder / "write.lock").write_text("owned by another program")
    with pytest.raises(SpotitError, match="not a spotit index"):
        Index.create(folder, demo["gallery"], ["cnn"])
    assert (folder / "write.lock").read_text() == "owned by another program"


def test_rebuild_replaces_an_index_of_another_format_and_needs_the_gallery(gallery_copy, tmp_path):
    index_dir = tmp_path / "idx"
    Index.create(index_dir, gallery_copy, ["cnn"]).update(progress=False)
    edit_state(index_dir, lambda state: state.update(format=99))
    with pytest.raises(SpotitError, match="rebuild"):
        Index.open(index_dir)
    with pytest.raises(SpotitError, match="give the gallery folder to rebuild"):
        Index.open_or_create(index_dir, None, ["cnn"], rebuild=True)
    rebuilt = Index.open_or_create(index_dir, gallery_copy, ["cnn"], rebuild=True)
    assert rebuilt.update(progress=False).added == 20
    assert len(list((index_dir / "shards").iterdir())) == 1


def test_a_creation_in_progress_is_waited_for_and_a_foreign_catalogue_refused(tmp_path):
    import sqlite3

    from spotit.errors import SpotitError
    from spotit.storage.lock import LOCK_FILE
    from spotit.storage.store import check_index_folder

    root = tmp_path / "idx"
    root.mkdir()
    (root / LOCK_FILE).write_text("")
    sqlite3.connect(root / "catalogue.db").close()  # another spotit's creation: its catalogue holds no state yet
    check_index_folder(root)  # not refused: the writer waits for the lock, then checks again
    with pytest.raises(SpotitError, match="not a spotit index"):
        check_index_folder(root, locked=True)  # under the lock, a catalogue without state is no index
    (root / LOCK_FILE).unlink()
    with pytest.raises(SpotitError, match="not a spotit index"):
        check_index_folder(root)  # without spotit's lock beside it, the file is someone else's


def test_a_commit_landing_while_a_state_is_read_makes_the_reader_read_the_newer_one(demo_index, monkeypatch):
    """`len(index)` and the server's status read the latest state as searches do: a writer's commit between
    opening a state and reading its catalogue sends them to the newer state, not to an error."""
    from spotit import index as index_module
    from spotit.storage.store import SnapshotGone

    real, reads, photos = index_module.Snapshot, [], len(demo_index)

    def superseded_once(store):
        reads.append(store)
        if len(reads) == 1:
            raise SnapshotGone(f"the catalogue {store.catalogue} holds a newer commit")
        return real(store)

    monkeypatch.setattr(index_module, "Snapshot", superseded_once)
    assert len(Index.open(demo_index.store.root)) == photos and len(reads) == 2
