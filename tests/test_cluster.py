"""Beyond one machine: the region shortlist in Milvus (Lite, and a real server), extraction on Ray.

Needs the extra `pip install '.[cluster]'`; each part is skipped cleanly without it."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from spotit import Index
from spotit.cli import main
from spotit.cluster import require
from spotit.errors import SpotitError

QUERIES = ["cup-1", "cat-2", "scene-3", "motorbike-1"]  # whole gallery photos as queries, beside the boxed one


def top_lists(index: Index, demo) -> list[list[tuple[str, float]]]:
    """The top 10 (id, score) of the demo's boxed query and of a few whole photos, with the hybrid method."""
    queries = [(demo["query"], [demo["box"]])] + [(demo["gallery"] / f"{q}.jpg", None) for q in QUERIES]
    return [[(hit.id, round(hit.score, 4)) for hit in index.search(path, boxes, top=10)] for path, boxes in queries]


@pytest.fixture(scope="module")
def faiss_index(demo, tmp_path_factory):
    index = Index.create(tmp_path_factory.mktemp("faiss") / "index", demo["gallery"], ["hybrid"], vectors="faiss")
    index.update(progress=False)
    return index


def test_a_milvus_lite_index_ranks_as_faiss_does(faiss_index, demo, tmp_path):
    pytest.importorskip("milvus_lite")
    uri = tmp_path / "regions.db"
    index = Index.create(tmp_path / "index", demo["gallery"], ["hybrid"], vectors=str(uri))
    index.update(progress=False)
    assert index.manifest["vectors"] == str(uri) and index.store.learned["vectors"] == "milvus"
    assert top_lists(index, demo) == top_lists(faiss_index, demo)
    # searches need no flag: a fresh process-level open reads the choice from the index
    assert top_lists(Index.open(tmp_path / "index"), demo)[0] == top_lists(faiss_index, demo)[0]


@pytest.fixture
def lite_uri(tmp_path):
    """A Milvus Lite file of the test's own."""
    pytest.importorskip("milvus_lite")
    return str(tmp_path / "regions.db")


def test_milvus_follows_added_and_removed_photos_and_drops_replaced_collections(demo, gallery_copy, lite_uri, tmp_path):
    """The same changes made to a faiss and a Milvus index leave the same rankings, step by step."""
    from spotit.cluster.milvus import client

    gallery, uri = gallery_copy, lite_uri
    index = Index.create(tmp_path / "index", gallery, ["hybrid"], vectors=uri)
    twin = Index.create(tmp_path / "twin", gallery, ["hybrid"], vectors="faiss")
    for each in (index, twin):
        each.update(progress=False)
    first = index.store.learned["collection"]
    (gallery / "cup-1.jpg").unlink()
    for i, photo in enumerate(sorted(gallery.iterdir())[:2]):
        Image.open(photo).save(gallery / f"new-{i}.png")
    for each in (index, twin):
        each.update(progress=False)
    assert index.store.learned["collection"] == first  # 21 photos: no re-learning, the new shard was added
    assert "cup-1" not in [h.id for h in index.search(demo["query"], [demo["box"]], top=None)]
    assert top_lists(index, demo)[0] == top_lists(twin, demo)[0]
    assert [h.id for h in index.search(gallery / "new-0.png", top=3)] == [h.id for h in twin.search(gallery / "new-0.png", top=3)]
    # doubling the gallery learns again: a new collection, and the old one is dropped
    for i, photo in enumerate(sorted(gallery.iterdir())[:25]):
        Image.open(photo).convert("RGB").save(gallery / f"more-{i}.jpg", quality=90)
    for each in (index, twin):
        each.update(progress=False)
    assert index.store.learned["collection"] != first
    assert top_lists(index, demo)[0] == top_lists(twin, demo)[0]
    mine = [name for name in client(uri).list_collections() if name.startswith(f"spotit_{index.manifest['uid']}_")]
    assert mine == [index.store.learned["collection"]]


def test_switching_between_milvus_and_faiss_keeps_the_ranking(faiss_index, demo, tmp_path):
    pytest.importorskip("milvus_lite")
    from spotit.cluster.milvus import client

    index_dir = tmp_path / "index"
    shutil.copytree(faiss_index.store.root, index_dir, ignore=shutil.ignore_patterns("write.lock"))
    uri = str(tmp_path / "regions.db")
    index = Index.open_or_create(index_dir, demo["gallery"], ["hybrid"], vectors=uri)
    report = index.update(progress=False)
    assert report.processed == 0 and index.store.learned["vectors"] == "milvus"  # no photo extracted again
    assert top_lists(index, demo) == top_lists(faiss_index, demo)
    index = Index.open_or_create(index_dir, demo["gallery"], ["hybrid"], vectors="faiss")
    index.update(progress=False)
    assert index.store.learned["vectors"] == "exact"
    assert not [n for n in client(uri).list_collections() if index.manifest["uid"] in n]


@pytest.mark.parametrize("choice, message", [
    ("bogus", "unknown --vectors 'bogus'"),
    ("/nonexistent/folder/x.db", "does not exist"),
])
def test_a_bad_vectors_choice_is_one_line(demo, tmp_path, capsys, choice, message):
    assert main(["index", str(demo["gallery"]), "--index", str(tmp_path / "idx"), "--vectors", choice, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_missing_extra_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pymilvus", None)  # as if it were not installed
    with pytest.raises(SpotitError, match=r"pip install 'spotit\[cluster\]'"):
        require("pymilvus", "vectors in Milvus")


def test_an_unreachable_milvus_server_is_one_line(demo, tmp_path, capsys):
    pytest.importorskip("pymilvus")
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = main(["index", str(demo["gallery"]), "--index", str(tmp_path / "idx"), "--vectors",
                 f"http://user:secretpw@127.0.0.1:{port}", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot open Milvus" in err and "Traceback" not in err and "secretpw" not in err
    # refused before anything is recorded: the next plain update builds a faiss index
    assert main(["index", str(demo["gallery"]), "--index", str(tmp_path / "idx"), "--quiet"]) == 0
    assert Index.open(tmp_path / "idx").manifest["vectors"] == "auto"


def test_an_unreachable_ray_cluster_is_one_line_at_once(demo, tmp_path, capsys):
    pytest.importorskip("ray")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.perf_counter()
    code = main(["index", str(demo["gallery"]), "--index", str(tmp_path / "idx"), "--method", "cnn", "--quiet",
                 "--ray", f"127.0.0.1:{port}"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot reach Ray" in err and "Traceback" not in err
    assert time.perf_counter() - started < 30
    assert not (tmp_path / "idx").exists()  # said before any work


def test_ray_auto_with_no_cluster_running_is_one_line_before_any_work(demo, tmp_path, monkeypatch, capsys):
    pytest.importorskip("ray")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    from ray._private import services

    # what Ray looks for: the cluster `ray start` last recorded, and any Ray running on this machine
    monkeypatch.setattr(services, "find_bootstrap_address", lambda temp_dir: None)
    monkeypatch.setattr(services, "find_gcs_addresses", lambda: [])
    code = main(["index", str(demo["gallery"]), "--index", str(tmp_path / "idx"), "--quiet", "--ray", "auto"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot connect to Ray at auto: no Ray cluster is running here" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "idx").exists()


def test_ray_auto_reads_ray_address_and_checks_it(demo, tmp_path, monkeypatch, capsys):
    pytest.importorskip("ray")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for named in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):  # nothing answers there
        monkeypatch.setenv("RAY_ADDRESS", named)
        code = main(["index", str(demo["gallery"]), "--index", str(tmp_path / "idx"), "--quiet", "--ray", "auto"])
        err = capsys.readouterr().err
        assert code == 2 and f"cannot reach Ray at auto ({named}): nothing answers" in err, err
        assert "Traceback" not in err
        assert not (tmp_path / "idx").exists()


def test_a_named_ray_cluster_without_ray_installed_is_one_line_before_any_work(demo, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)
    code = main(["index", str(demo["gallery"]), "--index", str(tmp_path / "idx"), "--quiet", "--ray", "head:6379"])
    err = capsys.readouterr().err
    assert code == 2 and "--ray head:6379 needs ray" in err and "pip install" in err and "Traceback" not in err
    assert not (tmp_path / "idx").exists()


class SlowStartingRay:
    """Ray whose local start fails `failures` times, as a raylet past its start-up window does: each failed
    start leaves a process running (its GCS server, say), which Ray's shutdown does not know of."""

    def __init__(self, failures):
        self.failures, self.starts, self.shutdowns, self.left = failures, 0, 0, []

    def is_initialized(self):
        return False

    def init(self, **options):
        self.starts += 1
        if self.starts <= self.failures:
            self.left.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]))
            raise Exception("The current node timed out during startup. This could happen because...")

    def shutdown(self):
        self.shutdowns += 1


@pytest.mark.parametrize("failures, connected", [(1, True), (2, False)])
def test_a_local_ray_that_fails_to_start_is_started_once_more(monkeypatch, failures, connected):
    pytest.importorskip("psutil")
    from spotit.cluster import ray_extract

    fake = SlowStartingRay(failures)
    monkeypatch.setattr(ray_extract, "require", lambda name, option: fake)
    if connected:
        assert ray_extract.connect("local", 2) == (fake, True)
    else:
        with pytest.raises(SpotitError, match=r"^cannot connect to Ray at local: The current node timed out"):
            ray_extract.connect("local", 2)
    assert fake.starts == min(failures + 1, ray_extract.LOCAL_STARTS) and fake.shutdowns == failures
    assert len(fake.left) == failures and all(process.poll() is not None for process in fake.left)  # all ended


def test_without_ray_the_update_falls_back_to_threads(demo, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    index = Index.create(tmp_path / "index", demo["gallery"], ["cnn"])
    with pytest.raises(SpotitError, match=r"--ray ray://head:10001 needs ray.*pip install"):
        index.update(progress=False, ray="ray://head:10001")  # a named cluster: no silent fallback
    report = index.update(progress=False, ray="local")
    assert report.added == 20 and any("Ray is not installed" in note for note in report.notes)


def test_without_the_extra_a_milvus_choice_is_one_line_and_not_recorded(demo, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pymilvus", None)
    assert main(["index", str(demo["gallery"]), "--index", str(tmp_path / "idx"), "--method", "cnn", "--vectors",
                 str(tmp_path / "x.db"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'spotit[cluster]'" in err and "Traceback" not in err
    assert not (tmp_path / "idx").exists()


@pytest.mark.slow
def test_ray_extraction_writes_the_index_the_local_path_writes(faiss_index, demo, tmp_path):
    pytest.importorskip("ray.data")
    index = Index.create(tmp_path / "index", demo["gallery"], ["hybrid"])
    report = index.update(progress=False, ray="local", workers=2)
    assert report.added == 20 and not report.notes
    assert top_lists(index, demo) == top_lists(faiss_index, demo)


@pytest.mark.slow
def test_a_dev_set_ranks_alike_with_faiss_milvus_lite_and_ray(dev_index, tmp_path):
    """clutter-hard-dev indexed three ways: every query's top 10 is the same (all three search exactly)."""
    pytest.importorskip("milvus_lite")
    pytest.importorskip("ray.data")
    dataset, faiss_built = dev_index("clutter-hard-dev")
    lite_dir = tmp_path / "lite"
    shutil.copytree(faiss_built.store.root, lite_dir, ignore=shutil.ignore_patterns("write.lock"))
    lite = Index.open_or_create(lite_dir, dataset.gallery, ["hybrid"], vectors=str(tmp_path / "regions.db"))
    assert lite.update(progress=False).processed == 0
    on_ray = Index.create(tmp_path / "ray", dataset.gallery, ["hybrid"])
    assert on_ray.update(progress=False, ray="local", workers=2).added == len(faiss_built)

    def tops(index):
        return [[hit.id for hit in index.search(q.path, q.boxes, top=10)] for q in dataset.queries]

    expected = tops(faiss_built)
    assert tops(lite) == expected
    assert tops(on_ray) == expected


KILLABLE = """
import sys
from spotit import Index
index = Index.open_or_create(sys.argv[1], sys.argv[2], ["hybrid"])
index.update(progress=False, ray="local", workers=2, shard_size=4)
"""


@pytest.mark.slow
def test_a_killed_ray_extraction_resumes(faiss_index, demo, tmp_path):
    pytest.importorskip("ray.data")
    index_dir = tmp_path / "index"
    process = subprocess.Popen([sys.executable, "-c", KILLABLE, str(index_dir), str(demo["gallery"])],
                               start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if len(Index.open(index_dir)) >= 4:
                    break
            except SpotitError:
                pass
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGKILL)  # the writer and its Ray cluster, as a power cut would
    finally:
        process.wait(30)
    saved = len(Index.open(index_dir))
    assert 4 <= saved < 20, saved
    index = Index.open_or_create(index_dir, demo["gallery"], ["hybrid"])
    report = index.update(progress=False, ray="local", workers=2)
    assert report.added == 20 - saved and report.unchanged == saved
    assert top_lists(index, demo) == top_lists(faiss_index, demo)


# ---- a real Milvus server shared by several processes ---------------------------------------------
@pytest.fixture(scope="module")
def milvus_server(tmp_path_factory):
    milvus = pytest.importorskip("milvus")
    pytest.importorskip("pymilvus")
    server = milvus.default_server
    server.set_base_dir(str(tmp_path_factory.mktemp("milvus")))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        server.listen_port = probe.getsockname()[1]
    server.start()
    yield f"http://127.0.0.1:{server.listen_port}"
    server.stop()


SEARCHER = """
import json, sys, time
from spotit import Index
index = Index.open(sys.argv[1])
seen, errors, deadline = [], [], time.time() + float(sys.argv[4])
while time.time() < deadline:
    try:
        hits = index.search(sys.argv[2], [json.loads(sys.argv[3])], top=5)
        seen.append([len(index), [h.id for h in hits[:3]]])
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
print(json.dumps({"seen": seen, "errors": errors}))
"""


@pytest.mark.slow
def test_two_searchers_share_a_milvus_server_while_a_third_process_updates(milvus_server, demo, tmp_path):
    """As on several machines: shortlist and catalogue in Milvus, nothing in the folder that needs shared memory."""
    gallery = tmp_path / "gallery"
    shutil.copytree(demo["gallery"], gallery)
    index_dir = tmp_path / "index"
    assert main(["index", str(gallery), "--index", str(index_dir), "--vectors", milvus_server,
                 "--catalogue", milvus_server, "--quiet"]) == 0
    assert not (index_dir / "catalogue.db").exists()
    searchers = [subprocess.Popen([sys.executable, "-c", SEARCHER, str(index_dir), str(demo["query"]),
                                   json.dumps(list(demo["box"])), "40"], stdout=subprocess.PIPE, text=True)
                 for _ in range(2)]
    time.sleep(8)
    copies = {}
    for i, photo in enumerate(sorted(gallery.iterdir())[:20]):  # doubles the gallery: learned again, new collection
        Image.open(photo).convert("RGB").save(gallery / f"new-{i}.jpg", quality=90)
        copies[f"new-{i}"] = photo.stem
    updater = subprocess.run([sys.executable, "-m", "spotit.cli", "index", str(gallery), "--index", str(index_dir),
                              "--quiet"], capture_output=True, text=True, timeout=300)
    assert updater.returncode == 0, updater.stderr
    reports = [json.loads(p.communicate(timeout=120)[0]) for p in searchers]
    for report in reports:
        assert report["errors"] == []
        sizes = [size for size, _ in report["seen"]]
        assert sizes[0] == 20 and sizes[-1] == 40  # each saw the update, without a restart
        wrong = [top for _, top in report["seen"] if not {copies.get(i, i) for i in top} <= set(demo["relevant"])]
        assert not wrong, (wrong[:3], copies)
    assert Index.open(index_dir).store.learned["vectors"] == "milvus"


def test_spotit_serve_searches_a_milvus_index_and_says_503_when_milvus_fails(faiss_index, demo, tmp_path, monkeypatch):
    pytest.importorskip("milvus_lite")
    from fastapi.testclient import TestClient

    from spotit.app import Service, create_app
    from spotit.cluster import milvus

    index = Index.create(tmp_path / "index", demo["gallery"], ["hybrid"], vectors=str(tmp_path / "regions.db"))
    index.update(progress=False)
    with TestClient(create_app(Service(index)), base_url="http://127.0.0.1") as client:
        form = {"boxes": json.dumps([list(demo["box"])])}
        files = {"image": ("q.jpg", demo["query"].read_bytes())}
        answer = client.post("/api/search", data=form, files=files).json()
        assert [r["id"] for r in answer["results"]] == [h.id for h in faiss_index.search(demo["query"], [demo["box"]])]

        def down(self, vectors, k):
            raise milvus.MilvusGone("connection refused")
        monkeypatch.setattr(milvus.MilvusRegions, "search", down)
        response = client.post("/api/search", data=form, files=files)
        assert response.status_code == 503 and "searching Milvus" in response.json()["detail"]


def test_a_copy_of_a_milvus_index_writes_to_collections_of_its_own(demo, gallery_copy, lite_uri, tmp_path):
    from spotit.cluster.milvus import client

    gallery, uri = gallery_copy, lite_uri
    original = Index.create(tmp_path / "original", gallery, ["hybrid"], vectors=uri)
    original.update(progress=False)
    before = top_lists(original, demo)[0]
    shutil.copytree(tmp_path / "original", tmp_path / "copy", ignore=shutil.ignore_patterns("write.lock"))
    Image.open(gallery / "scene-1.jpg").save(gallery / "added.png")
    copy = Index.open(tmp_path / "copy")
    copy.update(progress=False)
    assert copy.store.learned["collection"] != original.store.learned["collection"]
    assert original.store.learned["collection"] in client(uri).list_collections()
    assert top_lists(Index.open(tmp_path / "original"), demo)[0] == before


def test_an_index_can_leave_a_milvus_that_is_down(demo, tmp_path, monkeypatch):
    pytest.importorskip("milvus_lite")
    from spotit.cluster import milvus
    from spotit.errors import BackendError

    index = Index.create(tmp_path / "index", demo["gallery"], ["hybrid"], vectors=str(tmp_path / "regions.db"))
    index.update(progress=False)
    expected = top_lists(index, demo)

    def down(uri):
        raise BackendError(f"cannot open Milvus at {uri}: connection refused")
    monkeypatch.setattr(milvus, "client", down)
    index = Index.open_or_create(tmp_path / "index", demo["gallery"], ["hybrid"], vectors="faiss")
    report = index.update(progress=False)
    assert index.store.learned["vectors"] == "exact" and report.processed == 0
    assert any("old regions stay in Milvus" in note for note in report.notes)
    assert top_lists(index, demo) == expected


# ---- the catalogue in Milvus: an index folder that several machines share ---------------------------
def test_a_catalogue_in_milvus_serves_as_the_sqlite_one_does(faiss_index, demo, lite_uri, tmp_path, capsys):
    index_dir = tmp_path / "index"
    assert main(["index", str(demo["gallery"]), "--index", str(index_dir), "--method", "hybrid", "--vectors", "faiss",
                 "--catalogue", lite_uri]) == 0
    assert f"catalogue in Milvus at {lite_uri}" in capsys.readouterr().out
    assert not (index_dir / "catalogue.db").exists() and (index_dir / "catalogue.milvus.json").is_file()
    assert top_lists(Index.open(index_dir), demo) == top_lists(faiss_index, demo)


def test_a_copy_of_a_folder_whose_catalogue_is_in_milvus_is_refused(demo, lite_uri, tmp_path):
    Index.create(tmp_path / "original", demo["gallery"], ["cnn"], catalogue=lite_uri).update(progress=False)
    shutil.copytree(tmp_path / "original", tmp_path / "copy")
    with pytest.raises(SpotitError, match="is a copy of an index whose catalogue is in Milvus"):
        Index.open(tmp_path / "copy")
    assert len(Index.open(tmp_path / "original")) == 20


def catalogue_in_lite(root: Path, uri: str):
    from spotit.cluster.milvus_catalogue import MilvusCatalogue

    root.mkdir()
    catalogue = MilvusCatalogue.new(root, uri)
    catalogue.create({"generation": 1})
    catalogue.point()
    return catalogue


def commit(catalogue, generation: int, images, changes: dict) -> None:
    for name, entry in changes.items():
        if entry is None:
            del images[name]
        else:
            images[name] = entry
    catalogue.commit({"generation": generation}, images)


def entry(shard: str, row: int = 0) -> dict:
    return {"shard": shard, "row": row, "size": 10, "mtime_ns": 5, "width": 4, "height": 3, "taken": 1_700_000_000}


def test_a_milvus_catalogue_reader_sees_whole_commits_only(lite_uri, tmp_path, monkeypatch):
    """Readers of an older generation keep it while newer ones are written; an unfinished commit is invisible
    and the next writer clears it."""
    from spotit.cluster.milvus_catalogue import MilvusCatalogue
    from spotit.storage.catalogue import Images

    writer = catalogue_in_lite(tmp_path / "index", lite_uri)
    images = Images()
    commit(writer, 2, images, {"a.jpg": entry("s1"), "b\udce9.jpg": entry("s1", 1)})  # a name that is not UTF-8
    commit(writer, 3, images, {"a.jpg": entry("s2"), "b\udce9.jpg": None, "c.jpg": entry("s2", 1)})
    reader = MilvusCatalogue.at(tmp_path / "index")
    assert reader.images(2) == {"a.jpg": entry("s1"), "b\udce9.jpg": entry("s1", 1)}
    assert reader.images(3) == {"a.jpg": entry("s2"), "c.jpg": entry("s2", 1)}
    assert reader.columns(3).names == ["a.jpg", "c.jpg"] and reader.generation() == 3

    insert = writer.client.insert

    def dies_before_the_head(collection, rows):
        if collection == writer.heads and rows[0]["part"] == 0:
            raise ConnectionError("the writer's machine died")
        return insert(collection, rows)
    monkeypatch.setattr(writer.client, "insert", dies_before_the_head)
    with pytest.raises(SpotitError, match="writing the catalogue"):
        commit(writer, 4, images, {"d.jpg": entry("s3"), "a.jpg": None})
    monkeypatch.undo()
    assert writer.client.query(writer.photos, filter="born == 4", output_fields=["key"])  # rows it left
    assert reader.generation() == 3 and reader.images(3) == {"a.jpg": entry("s2"), "c.jpg": entry("s2", 1)}

    writer = MilvusCatalogue.at(tmp_path / "index")  # the next writer
    images = writer.images(3)
    commit(writer, 4, images, {"e.jpg": entry("s4")})
    assert reader.images(4) == {"a.jpg": entry("s2"), "c.jpg": entry("s2", 1), "e.jpg": entry("s4")}
    assert reader.state() == {"generation": 4}


def test_a_milvus_catalogue_deletes_old_entries_and_tells_a_late_reader(lite_uri, tmp_path, monkeypatch):
    from spotit.cluster import milvus_catalogue
    from spotit.storage.catalogue import Changed, Images

    monkeypatch.setattr(milvus_catalogue, "KEEP", 2)
    writer = catalogue_in_lite(tmp_path / "index", lite_uri)
    images = Images()
    for generation in range(2, 8):
        commit(writer, generation, images, {"a.jpg": entry(f"s{generation}")})
    assert writer.images(7) == {"a.jpg": entry("s7")}
    assert len(writer.client.query(writer.photos, filter="born >= 0", output_fields=["key"])) <= 3
    with pytest.raises(Changed):
        writer.images(3)


def test_moving_the_catalogue_to_milvus_and_back_needs_a_rebuild(demo, lite_uri, tmp_path, capsys):
    from spotit.cluster.milvus import client

    index_dir = tmp_path / "index"
    args = ["index", str(demo["gallery"]), "--index", str(index_dir), "--method", "cnn", "--quiet"]
    assert main(args) == 0
    expected = [h.id for h in Index.open(index_dir).search(demo["query"], [demo["box"]], top=5)]
    assert main([*args, "--catalogue", lite_uri]) == 2
    assert "add --rebuild" in capsys.readouterr().err and (index_dir / "catalogue.db").is_file()
    assert main([*args, "--catalogue", lite_uri, "--rebuild"]) == 0
    assert not (index_dir / "catalogue.db").exists()
    assert [h.id for h in Index.open(index_dir).search(demo["query"], [demo["box"]], top=5)] == expected
    prefix = json.loads((index_dir / "catalogue.milvus.json").read_text())["prefix"]
    assert main([*args, "--catalogue", "sqlite", "--rebuild"]) == 0
    assert (index_dir / "catalogue.db").is_file() and not (index_dir / "catalogue.milvus.json").exists()
    assert not [n for n in client(lite_uri).list_collections() if n.startswith(prefix)]
    assert [h.id for h in Index.open(index_dir).search(demo["query"], [demo["box"]], top=5)] == expected


@pytest.mark.parametrize("choice, message", [("postgres://x", "--catalogue postgres://x: give sqlite"),
                                             ("http://127.0.0.1:{port}", "cannot open Milvus")])
def test_a_bad_or_unreachable_catalogue_is_one_line_and_writes_nothing(demo, tmp_path, capsys, choice, message):
    pytest.importorskip("pymilvus")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = main(["index", str(demo["gallery"]), "--index", str(tmp_path / "idx"), "--catalogue",
                 choice.format(port=port), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "idx").exists()
