"""The index at scale: incremental catalogue commits, learned parts kept until the gallery doubles, the
approximate vector shortlist, and results that do not depend on the order photos came and went in."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from spotit import Index
from spotit.errors import SpotitError
from spotit.storage.catalogue import Catalogue
from spotit.vectors import (
    AUTO_EXACT_PHOTOS,
    ID_STRIDE,
    ApproximateRegions,
    ExactRegions,
    GlobalVectors,
    add_codes,
    encode,
    fp16_flat,
    global_kind,
    region_ids,
    train,
)


def search(index: Index, demo) -> list[tuple[str, float]]:
    return [(hit.id, round(hit.score, 4)) for hit in index.search(demo["query"], [demo["box"]], top=None)]


def subset(demo, folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(demo["gallery"] / name, folder / name)
    return folder


@pytest.fixture
def photo_names(demo):
    return sorted(p.name for p in demo["gallery"].iterdir())


def test_each_commit_writes_only_the_photos_it_changed(gallery_copy, tmp_path, monkeypatch, demo):
    written = []
    real_commit = Catalogue.commit

    def counting(self, state, images):
        written.append(len(images.changed))
        return real_commit(self, state, images)

    monkeypatch.setattr(Catalogue, "commit", counting)
    index = Index.create(tmp_path / "idx", gallery_copy, ["cnn"])
    index.update(progress=False, shard_size=8)
    assert max(written) == 8 and sum(written) == 20
    written.clear()
    shutil.copy(demo["query"], gallery_copy / "new.jpg")
    index.update(progress=False, shard_size=8)
    assert sum(written) == 1  # one new photo: one row written, not the catalogue again


def test_the_approximate_shortlist_agrees_with_exact_search_on_a_small_gallery(demo, tmp_path):
    exact = Index.create(tmp_path / "exact", demo["gallery"], ["hybrid"], vectors="exact")
    exact.update(progress=False)
    approximate = Index.create(tmp_path / "ivfpq", demo["gallery"], ["hybrid"], vectors="ivfpq")
    approximate.update(progress=False)
    assert approximate.manifest["learned"]["vectors"] == "ivfpq"
    assert list((tmp_path / "ivfpq" / "shards").glob("*.c*.npy"))
    assert not list((tmp_path / "exact" / "shards").glob("*.c*.npy"))
    found, truth = search(approximate, demo), search(exact, demo)
    assert [i for i, _ in found[:10]] == [i for i, _ in truth[:10]]
    assert np.allclose([s for _, s in found[:10]], [s for _, s in truth[:10]], atol=1e-3)


def test_learned_parts_are_kept_until_the_gallery_doubles(demo, photo_names, tmp_path):
    gallery = subset(demo, tmp_path / "gallery", photo_names[:8])
    index = Index.create(tmp_path / "idx", gallery, ["hybrid"])
    index.update(progress=False)
    first = index.manifest["learned"]
    subset(demo, gallery, photo_names[8:12])
    index.update(progress=False, shard_size=256)
    assert index.manifest["learned"] == first  # 12 photos: not learned again, the new shard derived alone
    assert len(list((tmp_path / "idx" / "shards").glob(f"*.w{first['version']}.npy"))) == 2
    subset(demo, gallery, photo_names[12:16])
    index.update(progress=False)
    second = index.manifest["learned"]
    assert second["version"] > first["version"] and second["photos"] == 16
    assert not list((tmp_path / "idx").rglob(f"*{first['version']}.n*"))  # the old version's files are gone


def test_adding_then_removing_photos_leaves_the_same_results(demo, photo_names, tmp_path):
    gallery = subset(demo, tmp_path / "gallery", photo_names[:12])
    index = Index.create(tmp_path / "idx", gallery, ["hybrid"])
    index.update(progress=False)
    before = search(index, demo)
    subset(demo, gallery, photo_names[12:16])
    index.update(progress=False)
    assert len(search(index, demo)) == 16
    for name in photo_names[12:16]:
        (gallery / name).unlink()
    index.update(progress=False)
    assert search(index, demo) == before


def test_an_unknown_vector_index_is_refused(demo, tmp_path):
    with pytest.raises(SpotitError, match="unknown --vectors 'hnsw'.*auto, exact, ivfpq"):
        Index.create(tmp_path / "idx", demo["gallery"], ["hybrid"], vectors="hnsw")


def test_approximate_regions_find_what_exact_search_finds():
    rng = np.random.default_rng(0)
    photos, per_image, dims = 400, 4, 64
    regions = rng.normal(size=(photos, per_image, dims)).astype(np.float32)
    regions /= np.linalg.norm(regions, axis=2, keepdims=True)
    trained = train(regions.reshape(-1, dims), photos * per_image, {"lists": 16, "m": 16})
    vids = np.arange(photos) * 3 + 1  # ids need not be positions
    import faiss

    index = faiss.clone_index(trained)
    add_codes(index, encode(trained, regions.reshape(-1, dims)), region_ids(vids, per_image))
    lookup = {int(v): i for i, v in enumerate(vids)}
    conf = {"probe": 16, "neighbours": 64, "rescore": 50}
    approximate = ApproximateRegions([index], per_image, photos, lambda w: np.array([lookup.get(int(v), -1) for v in w]),
                                     lambda rows: regions[rows], conf)
    exact = ExactRegions(regions, per_image)
    queries = regions[rng.choice(photos, 5, replace=False), 0] + 0.05 * rng.normal(size=(5, dims)).astype(np.float32)
    found, truth = approximate.scores(queries), exact.scores(queries)
    best = truth.argmax(axis=1)
    assert (found.argmax(axis=1) == best).all()  # each query's photo is found, and re-scored exactly
    assert np.allclose(found[np.arange(5), best], truth[np.arange(5), best], atol=1e-5)
    candidates = found > -1
    assert np.allclose(found[candidates], truth[candidates], atol=1e-5) and (~candidates).sum() > 0
    assert ID_STRIDE >= per_image
    # query expansion re-scores exactly the photos the last search found, without reading them again
    reads = []
    approximate.read = lambda rows: reads.append(len(rows)) or regions[rows]
    approximate.scores(queries)
    refined = queries[:1] + regions[best[0], 1]
    again = approximate.requery(refined)[0]
    assert len(reads) == 1 and np.array_equal(again > -1, candidates.any(axis=0))
    assert np.allclose(again[again > -1], exact.scores(refined)[0][again > -1], atol=1e-5)
    assert (approximate.requery(refined)[0] > -1).sum() <= conf["rescore"] and len(reads) == 2  # nothing kept: search anew
    # whole-photo queries' hubness reduction: the same densities, from every photo's stored regions read once
    rows = np.array([3, 7, 3, 399])
    assert np.allclose(approximate.density(rows, 10), exact.density(rows, 10), atol=1e-6)
    approximate.density(np.array([5]), 10)
    assert len(reads) == 3
    too_many = ApproximateRegions([index], per_image, AUTO_EXACT_PHOTOS + 1, None, None, conf)
    assert too_many.density(rows, 10) is None  # not read into memory at that size


def test_the_cnn_flat_index_finds_the_k_best_of_exact_search_within_a_mask():
    rng = np.random.default_rng(2)
    photos, dims = 3000, 64
    gallery = rng.random((photos, dims), np.float32)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    exact, flat = GlobalVectors("exact", photos, dims), GlobalVectors("flat-fp16", photos, dims)
    order = rng.permutation(photos)  # filled out of order, as shards interleave in the catalogue
    for part in np.array_split(order, 7):
        exact.put(part, gallery[part])
    # a base file's rows, with 100 rows of photos gone since (copies of the best match: they must not count),
    # and the photos added since it, in memory
    in_base, since = order[:2000], order[2000:]
    rows = np.concatenate([gallery[in_base], np.repeat(gallery[5:6], 100, axis=0)])
    flat.add(fp16_flat(dims, len(rows), np.array_split(rows, 3)), np.concatenate([in_base, np.full(100, -1)]))
    flat.add(fp16_flat(dims, len(since), [gallery[since]]), since)
    query = gallery[5] + 0.1 * rng.random(dims, np.float32)
    truth, found = exact.scores(query), flat.scores(query, 50)

    def same_best(found, truth, k):  # the same up to float16 rounding: near ties may swap
        best = np.flatnonzero(found > -1)
        assert len(best) == k and np.allclose(found[best], truth[best], atol=2e-3)
        assert np.allclose(np.sort(found[best]), np.sort(truth)[-k:], atol=2e-3)
        assert len(set(best) & set(np.argsort(-truth)[:k])) >= 0.9 * k

    same_best(found, truth, 50)
    assert found.argmax() == truth.argmax() == 5
    mask = np.zeros(photos, bool)
    mask[::3] = True
    scoped = flat.scores(query, 20, mask)
    assert mask[scoped > -1].all()
    same_best(scoped, np.where(mask, truth, -2), 20)
    assert (flat.scores(query) > -1).all()  # no k: every photo scored
    assert global_kind("auto", 10) == "exact" and global_kind("auto", 10**6) == "flat-fp16"
    assert global_kind("ivfpq", 10) == "flat-fp16" and global_kind("exact", 10**6) == "exact"


def test_cnn_through_faiss_ranks_a_gallery_as_exact_search_does(demo, tmp_path):
    exact = Index.create(tmp_path / "exact", demo["gallery"], ["cnn"], vectors="exact")
    exact.update(progress=False)
    flat = Index.create(tmp_path / "flat", demo["gallery"], ["cnn"], vectors="ivfpq")
    flat.update(progress=False)
    assert flat.snapshot().global_vectors().kind == "flat-fp16"
    assert exact.snapshot().global_vectors().kind == "exact"
    for top in (None, 5):
        truth = [(h.id, round(h.score, 3)) for h in exact.search(demo["query"], [demo["box"]], method="cnn", top=top)]
        found = [(h.id, round(h.score, 3)) for h in flat.search(demo["query"], [demo["box"]], method="cnn", top=top)]
        assert [i for i, _ in found] == [i for i, _ in truth] and len(found) == (top or 20)
        assert np.allclose([s for _, s in found], [s for _, s in truth], atol=2e-3)
    import h5py

    shard = next((tmp_path / "flat" / "shards").glob("*.h5"))
    with h5py.File(shard) as data:
        assert data["global"].dtype == np.float16  # half the disk of float32


def test_distractors_are_calibrated_against_unrelated_photos_only(demo, tmp_path):
    from spotit.evaluation.datasets import Dataset, Query
    from spotit.evaluation.scale import related_groups

    names = ["a/1.jpg", "a/2.jpg", "b/3.jpg", "c/4.jpg", "d/5.jpg"]
    queries = [Query("1.jpg", tmp_path / "1.jpg", [], {"default": (["a/2", "b/3"], [])}),
               Query("x.jpg", tmp_path / "x.jpg", [], {"easy": (["d/5"], []), "hard": (["c/4"], [])})]
    groups = related_groups(Dataset("set", "plain", tmp_path, tmp_path, queries), names)
    assert groups[1] == groups[2] != groups[3] and groups[3] == groups[4] and groups[0] != groups[1]


def test_photos_listed_with_one_shared_local_feature_set_store_it_once(tmp_path):
    from spotit.features.local_features import LocalFeatures
    from spotit.storage.store import Store

    rng = np.random.default_rng(1)
    shared = LocalFeatures(rng.random((30, 4), np.float32), rng.integers(0, 256, (30, 128)).astype(np.uint8))
    own = LocalFeatures(rng.random((5, 4), np.float32), rng.integers(0, 256, (5, 128)).astype(np.uint8))
    store = Store.create(tmp_path / "index", {})
    names = ["a", "b", "c", "d"]
    shard = store.shards.write(names, {"verify": [shared, own, shared, shared]})
    for row, name in enumerate(names):
        store.images[name] = {"shard": shard, "row": row}
    reader = store.shards.local_reader("verify")
    for name, features in zip(names, [shared, own, shared, shared]):
        assert np.array_equal(reader(name).descriptors, features.descriptors)
    assert np.array_equal(store.shards.load_local("verify")["d"].keypoints, shared.keypoints)
    import h5py

    with h5py.File(store.shard_dir / shard) as data:
        assert len(data["verify/descriptors"]) == 35  # the shared set once


@pytest.mark.slow
def test_bench_scale_adds_distractors_and_measures_the_real_queries(demo, tmp_path, capsys, monkeypatch):
    import json

    from spotit.cli import main

    root = tmp_path / "set"
    shutil.copytree(demo["gallery"], root / "images")
    # the demo's cups are one object seen three times; every other photo is its own
    (root / "groundtruth.json").write_text(json.dumps({f"{c}.jpg": [f"{o}.jpg" for o in demo["relevant"] if o != c]
                                                       for c in demo["relevant"]}))
    monkeypatch.setenv("SPOTIT_CACHE", str(tmp_path / "cache"))
    assert main(["bench", "scale", str(root), "--images", "300", "--vectors", "ivfpq", "--recall", "--json", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["images"] == 300 and result["vectors"] == "ivfpq" and result["queries"] == 3
    assert 0 < result["map"] <= 1 and 0 < result["recall_at_100"] <= 1
    assert result["rss_bytes"] > 0 and result["open_s"] > 0 and result["add_1000_s"] > 0 and result["remove_1000_s"] > 0
    index = Index.open(result["index"])
    assert sum(name.startswith("~distractors/") for name in index.snapshot().names) == 280  # the 1,000 added are gone
    assert sorted(p.name for p in Path(result["index"], "shards").glob("*.h5")) == sorted(set(index.store.columns().shards))
    assert main(["bench", "scale", str(root), "--images", "20", "--quiet"]) == 2
    assert "must exceed the 20 photos" in capsys.readouterr().err
    assert main(["bench", "scale", str(root), "--images", "300", "--method", "cnn", "--vectors", "ivfpq", "--recall",
                 "--json", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["vectors"] == "flat-fp16" and result["recall_at_100"] > 0.95 and 0 < result["map"] <= 1
    assert Index.open(result["index"]).methods == ["cnn"] and result["index"].endswith("-cnn")


def test_removing_photos_rewrites_only_the_shards_they_emptied(demo, photo_names, tmp_path):
    gallery = subset(demo, tmp_path / "gallery", photo_names[:16])
    index = Index.create(tmp_path / "idx", gallery, ["hybrid"])
    index.update(progress=False, shard_size=8)
    before = {h.id: round(h.score, 5) for h in index.search(demo["query"], [demo["box"]], method="regional", top=None)}
    shards = {name: entry["shard"] for name, entry in index.store.reload().images.items()}
    first, second = sorted(set(shards.values()))
    in_first = sorted(name for name, shard in shards.items() if shard == first)
    for name in in_first[:5]:
        (gallery / name).unlink()
    report = index.update(progress=False, shard_size=8)
    assert report.removed == 5
    after = {name: entry["shard"] for name, entry in index.store.reload().images.items()}
    assert all(after[name] == second for name, shard in shards.items() if shard == second)  # untouched
    assert {after[name] for name in in_first[5:]} - {first, second}  # the three left moved to a new shard
    assert not (tmp_path / "idx" / "shards" / first).exists()
    # the moved photos' features, and the learned parts, are what they were: each photo scores the same
    after = {h.id: round(h.score, 5) for h in index.search(demo["query"], [demo["box"]], method="regional", top=None)}
    assert after == {i: score for i, score in before.items() if i in after} and len(after) == 11


def test_auto_changes_the_vector_index_kind_only_when_it_learns_again(demo, photo_names, tmp_path, monkeypatch):
    monkeypatch.setattr("spotit.vectors.AUTO_EXACT_PHOTOS", 10)
    gallery = subset(demo, tmp_path / "gallery", photo_names[:8])
    index = Index.create(tmp_path / "idx", gallery, ["hybrid"])
    index.update(progress=False)
    assert index.manifest["learned"]["vectors"] == "exact"
    subset(demo, gallery, photo_names[8:12])  # past the threshold, but not doubled: nothing learned again
    index.update(progress=False)
    assert index.manifest["learned"]["vectors"] == "exact" and index.manifest["learned"]["photos"] == 8
    subset(demo, gallery, photo_names[12:16])
    index.update(progress=False)
    assert index.manifest["learned"] == {**index.manifest["learned"], "vectors": "ivfpq", "photos": 16}
    assert len(index.search(demo["query"], [demo["box"]], top=5)) == 5


def test_a_shard_missing_its_derived_files_is_searched_and_derived_by_the_next_update(demo, tmp_path):
    index_dir = tmp_path / "idx"
    shutil.copytree(demo["gallery"], tmp_path / "gallery")
    index = Index.create(index_dir, tmp_path / "gallery", ["hybrid"])
    index.update(progress=False)
    expected = search(index, demo)
    whitened = sorted((index_dir / "shards").glob("*.w*.npy"))
    whitened[0].unlink()  # as an update killed while deriving leaves it
    # derived in memory meanwhile (from the float whitening, not its stored 8-bit form: scores differ a little)
    assert [i for i, _ in search(Index.open(index_dir), demo)][:3] == [i for i, _ in expected][:3]
    index.update(progress=False)
    assert whitened[0].is_file() and search(Index.open(index_dir), demo) == expected


def test_a_commit_needs_no_earlier_read_of_the_photos(demo_index, tmp_path):
    from spotit.storage.store import Store

    shutil.copytree(demo_index.store.root, tmp_path / "idx")
    store = Store.open(tmp_path / "idx")
    store.manifest["vectors"] = "exact"
    store.commit()
    assert len(Store.open(tmp_path / "idx").images) == 20


def test_file_arrays_read_rows_slices_and_lists_as_numpy_would(tmp_path):
    from spotit.fileio import FileArray

    array = np.arange(5 * 3 * 2, dtype=np.int16).reshape(5, 3, 2)
    np.save(tmp_path / "a.npy", array)
    read = FileArray.of_npy(tmp_path / "a.npy")
    assert read.shape == (5, 3, 2) and len(read) == 5
    assert np.array_equal(read[3], array[3]) and np.array_equal(read[1:4], array[1:4])
    assert np.array_equal(read[[4, 0, 2]], array[[4, 0, 2]]) and read[2:2].shape == (0, 3, 2)


def test_shards_added_after_the_vector_base_are_searched_beside_it(demo, photo_names, tmp_path):
    gallery = subset(demo, tmp_path / "gallery", photo_names[:16])
    index = Index.create(tmp_path / "idx", gallery, ["hybrid"], vectors="ivfpq")
    index.update(progress=False)
    base = index.manifest["learned"]["base"]
    assert (tmp_path / "idx" / base["file"]).is_file() and len(base["shards"]) == 1
    for i in range(2):
        shutil.copy(demo["query"], gallery / f"new-{i}.jpg")
    index.update(progress=False)
    assert index.manifest["learned"]["base"] == base  # 2 of 18 photos outside it: not written again
    hits = index.search(demo["query"], top=2)
    assert {h.id for h in hits} == {"new-0", "new-1"}
    for i in range(4):
        shutil.copy(demo["query"], gallery / f"more-{i}.jpg")
    index.update(progress=False)
    assert index.manifest["learned"]["base"]["file"] != base["file"]  # 6 of 22 outside: written again
    assert not (tmp_path / "idx" / base["file"]).exists()


def test_the_cnn_base_file_is_searched_with_the_photos_added_and_removed_since(demo, photo_names, tmp_path):
    gallery = subset(demo, tmp_path / "gallery", photo_names[:16])
    index = Index.create(tmp_path / "idx", gallery, ["cnn"], vectors="ivfpq")
    index.update(progress=False)
    base = index.manifest["global_base"]
    assert (tmp_path / "idx" / base["file"]).is_file() and base["rows"] == [16]
    for i in range(2):
        shutil.copy(demo["query"], gallery / f"new-{i}.jpg")
    (gallery / photo_names[0]).unlink()
    index.update(progress=False)
    assert index.manifest["global_base"] == base  # 2 of 17 photos outside it: not written again

    def ranked(index):
        return [(h.id, round(h.score, 2)) for h in index.search(demo["query"], method="cnn", top=None)]

    fresh = Index.create(tmp_path / "fresh", gallery, ["cnn"], vectors="exact")
    fresh.update(progress=False)
    found = ranked(index)
    assert {i for i, _ in found[:2]} == {"new-0", "new-1"} and Path(photo_names[0]).stem not in dict(found)
    assert sorted(found) == sorted(ranked(fresh))  # the same photos and scores as exact search afresh
    for i in range(4):
        shutil.copy(demo["query"], gallery / f"more-{i}.jpg")
    index.update(progress=False)
    assert index.manifest["global_base"]["file"] != base["file"]  # 6 of 21 outside: written again
    assert not (tmp_path / "idx" / base["file"]).exists()
