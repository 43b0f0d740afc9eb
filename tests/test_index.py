import json
import os

import cv2
import numpy as np
import pytest
from conftest import edit_state

from spotit import Index, SpotitError
from spotit.features.local_features import LocalFeatures
from spotit.storage.store import MANIFEST, Store


def test_index_holds_every_gallery_image_with_both_feature_kinds(demo, demo_index):
    names, matrix = demo_index.store.shards.load_dense("global")
    assert names == sorted(p.name for p in demo["gallery"].iterdir())
    assert matrix.shape == (len(names), 1280)
    assert np.allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)
    local = demo_index.store.shards.load_local("sift")
    assert set(local) == set(names) and all(len(f) > 20 for f in local.values())


def test_reindexing_processes_only_new_and_changed_images_and_drops_deleted(gallery_copy, tmp_path, noise_image):
    index = Index.create(tmp_path / "idx", gallery_copy, ["cnn"])
    threads = cv2.getNumThreads()
    first = index.update(progress=False, workers=2)
    assert (first.added, first.updated, first.removed) == (20, 0, 0)
    assert cv2.getNumThreads() == threads  # workers run OpenCV single-threaded; searches get it all back

    again = Index.open_or_create(tmp_path / "idx", gallery_copy, ["cnn"]).update(progress=False)
    assert (again.added, again.updated, again.removed, again.unchanged) == (0, 0, 0, 20)

    noise_image(gallery_copy / "new.png")
    (gallery_copy / "cat-1.jpg").unlink()
    changed = gallery_copy / "cup-1.jpg"
    noise_image(changed, seed=3)
    os.utime(changed, ns=(1, 1))  # a distinct stamp even on coarse file-system clocks
    index = Index.open_or_create(tmp_path / "idx", gallery_copy, ["cnn"])
    report = index.update(progress=False)
    assert (report.added, report.updated, report.removed, report.unchanged) == (1, 1, 1, 18)
    names, _ = index.store.shards.load_dense("global")
    assert "new.png" in names and "cat-1.jpg" not in names and len(names) == 20
    # the changed file's features are the new content's: it is now most similar to itself only
    hits = index.search(gallery_copy / "cup-1.jpg", top=1)
    assert hits[0].id == "cup-1" and hits[0].score > 0.99


def test_bad_files_are_skipped_listed_and_the_rest_indexed(gallery_copy, tmp_path):
    (gallery_copy / "empty.jpg").write_bytes(b"")
    (gallery_copy / "text.png").write_text("hello")
    good = (gallery_copy / "cup-1.jpg").read_bytes()
    (gallery_copy / "cut.jpg").write_bytes(good[: len(good) // 3])
    index = Index.create(tmp_path / "idx", gallery_copy, ["cnn", "sift"])
    report = index.update(progress=False)
    assert sorted(name for name, _ in report.skipped) == ["cut.jpg", "empty.jpg", "text.png"]
    assert all(reason for _, reason in report.skipped)
    assert report.added == 20 and len(index) == 20


def test_interrupted_update_keeps_every_finished_photo_and_resumes(gallery_copy, tmp_path, monkeypatch):
    index = Index.create(tmp_path / "idx", gallery_copy, ["cnn"])
    real_extract = index.features.extract
    calls = {"n": 0}

    def dying(image, kinds):
        calls["n"] += 1
        if calls["n"] == 9:
            raise KeyboardInterrupt
        return real_extract(image, kinds)

    monkeypatch.setattr(index.features, "extract", dying)
    with pytest.raises(KeyboardInterrupt):
        index.update(progress=False, shard_size=256, workers=1)
    saved = Store.open(tmp_path / "idx").images
    assert len(saved) == 8  # the eight finished photos are committed, though no shard was full
    resumed = Index.open_or_create(tmp_path / "idx", gallery_copy, ["cnn"]).update(progress=False)
    assert (resumed.added, resumed.unchanged) == (12, 8)
    assert not [p for p in (tmp_path / "idx" / "shards").iterdir() if p.suffix != ".h5"]


def test_missing_index_says_how_to_build_one(tmp_path):
    with pytest.raises(SpotitError, match="spotit index GALLERY"):
        Index.open(tmp_path / "nothing")


def test_index_from_another_version_is_refused(demo, tmp_path):
    Index.create(tmp_path / "idx", demo["gallery"], ["cnn"])
    edit_state(tmp_path / "idx", lambda state: state.update(format=99, spotit_version="9.9"))
    with pytest.raises(SpotitError, match="spotit 9.9.*rebuild"):
        Index.open(tmp_path / "idx")


def test_index_with_other_feature_settings_is_refused(demo, tmp_path):
    Index.create(tmp_path / "idx", demo["gallery"], ["cnn"])
    edit_state(tmp_path / "idx", lambda state: state["feature_settings"]["global"].update(crop=123))
    with pytest.raises(SpotitError, match="other feature settings.*--rebuild"):
        Index.open(tmp_path / "idx")


def test_index_with_another_backbone_or_gallery_or_method_says_so(demo, demo_index, tmp_path):
    with pytest.raises(SpotitError, match="built with backbone efficientnet-lite0, not resnet18"):
        Index.open_or_create(demo_index.store.root, demo["gallery"], ["cnn"], backbone="resnet18")
    with pytest.raises(SpotitError, match="belongs to gallery"):
        Index.open_or_create(demo_index.store.root, tmp_path, ["cnn"])
    cnn_only = Index.create(tmp_path / "cnn-only", demo["gallery"], ["cnn"])
    cnn_only.update(progress=False)
    with pytest.raises(SpotitError, match="serves cnn, not sift"):
        cnn_only.search(demo["query"], method="sift")


def test_index_must_live_outside_the_gallery(gallery_copy):
    with pytest.raises(SpotitError, match="outside the gallery"):
        Index.create(gallery_copy / "idx", gallery_copy)


def test_adding_a_method_extracts_it_for_existing_images(gallery_copy, tmp_path):
    Index.create(tmp_path / "idx", gallery_copy, ["cnn"]).update(progress=False)
    index = Index.open_or_create(tmp_path / "idx", gallery_copy, ["sift"])
    report = index.update(progress=False)
    assert index.methods == ["cnn", "sift"] and report.updated == 20
    assert len(index.store.shards.load_local("sift")) == 20 and len(index.store.shards.load_dense("global")[0]) == 20


def test_local_reader_returns_what_each_shard_stored(tmp_path):
    rng = np.random.default_rng(0)

    def random_features(n):
        return LocalFeatures(rng.random((n, 4), np.float32), rng.integers(0, 256, (n, 128)).astype(np.uint8))

    store = Store.create(tmp_path / "index", {})
    written = {}
    for names in (["a", "b", "empty"], ["c"]):
        feats = [random_features(0 if name == "empty" else int(rng.integers(2, 50))) for name in names]
        shard = store.shards.write(names, {"verify": feats})
        for row, (name, feat) in enumerate(zip(names, feats)):
            store.images[name] = {"shard": shard, "row": row}
            written[name] = feat
    reader = store.shards.local_reader("verify")
    for name in ["c", "a", "empty", "b"]:
        read = reader(name)
        assert np.array_equal(read.keypoints, written[name].keypoints)
        assert np.array_equal(read.descriptors, written[name].descriptors)
    with pytest.raises(SpotitError, match="no sift features"):
        store.shards.local_reader("sift")("a")


def test_an_index_in_the_json_format_of_spotit_0_1_says_how_to_rebuild(gallery_copy, tmp_path):
    index_dir = tmp_path / "old"
    index_dir.mkdir()
    (index_dir / MANIFEST).write_text(json.dumps({"format": 1, "spotit_version": "0.1.0", "gallery": str(gallery_copy),
                                                 "images": {}, "feature_settings": {}, "methods": ["cnn"]}))
    with pytest.raises(SpotitError, match=r"spotit 0\.1\.0 in another format; rebuild it with `spotit index GALLERY"):
        Index.open(index_dir)
    rebuilt = Index.open_or_create(index_dir, gallery_copy, ["cnn"], rebuild=True)
    assert rebuilt.update(progress=False).added == 20
    assert not (index_dir / MANIFEST).exists() and (index_dir / "catalogue.db").is_file()
