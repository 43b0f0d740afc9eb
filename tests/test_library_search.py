"""Searching a real photo library: a verdict per result, several query photos, a scope, a watched gallery."""

import datetime as dt
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from spotit import Index
from spotit.cli import main
from spotit.errors import SpotitError
from spotit.images import taken
from spotit.search import verdict
from spotit.search.scope import parse_date
from spotit.storage.store import Store

SPOTIT = [sys.executable, "-m", "spotit.cli"]


# ---- the verdict -----------------------------------------------------------------------------------
def test_every_hybrid_result_has_a_verdict_and_matches_stop_at_the_cut_off(demo_index, demo):
    ranked = demo_index.search(demo["query"], [demo["box"]], top=10)
    assert all(hit.match in verdict.VERDICTS and 0 <= hit.confidence <= 1 for hit in ranked)
    assert [hit.match for hit in ranked if hit.id in demo["relevant"]] == ["yes"] * len(demo["relevant"])
    assert ranked[-1].match == "no" and "match" in ranked[0].to_dict()
    sure = demo_index.search(demo["query"], [demo["box"]], top=10, matches="yes")
    assert [hit.id for hit in sure] == [hit.id for hit in ranked if hit.match == "yes"]
    assert {hit.id for hit in sure} == set(demo["relevant"])
    with pytest.raises(SpotitError, match="need the hybrid method"):
        demo_index.search(demo["query"], [demo["box"]], method="cnn", matches="yes")
    with pytest.raises(SpotitError, match="matches must be"):
        demo_index.search(demo["query"], matches="sure")


def test_the_verdict_model_is_fitted_and_its_cut_off_reaches_the_precision():
    rng = np.random.default_rng(0)
    evidence = np.concatenate([rng.uniform(20, 200, 300), rng.uniform(0, 15, 700)])
    similarity = np.concatenate([rng.normal(0.6, 0.1, 300), rng.normal(0.3, 0.1, 700)])
    labels = np.concatenate([np.ones(300), np.zeros(700)])
    labels[:3] = 0  # a few verified-looking photos that are not the object
    weights, bias = verdict.fit(verdict.features(evidence, similarity), labels)
    assert weights[0] > 0 and weights[1] > 0
    p = verdict.probability(evidence, similarity, {"weights": weights, "bias": bias})
    cut = verdict.cut_off([(p, labels)], 0.98)
    chosen = p >= cut
    assert labels[chosen].mean() >= 0.98 and labels[chosen].sum() >= 250
    assert verdict.verdict(0.999) == "yes" and verdict.verdict(0.0) == "no"


def test_matches_look_past_the_shortlist_only_where_similarity_alone_could_do():
    from spotit.search.searcher import could_match

    conf = verdict.confs["default"]
    alone_maybe = next(s for s in np.linspace(0, 1, 1001) if verdict.probability(0.0, s) >= conf["maybe"])
    merged = np.array([0.05, alone_maybe + 0.01, 0.9, -np.inf, alone_maybe - 0.01])
    scores, count = could_match(merged, [{0: None}], "maybe")  # row 0 was verified (whatever its score)
    assert count == 3 and np.isfinite(scores).tolist() == [True, True, True, False, False]
    if verdict.probability(0.0, 1.0) < conf["yes"]:  # similarity alone never makes a yes
        assert could_match(merged, [{0: None}], "yes")[1] == 1


def test_a_cut_off_never_splits_a_tie_and_holds_on_every_set():
    p = np.array([0.9, 0.8, 0.8, 0.8, 0.1])
    labels = np.array([1, 1, 0, 0, 0])
    assert verdict.cut_off([(p, labels)], 0.9) == 0.9  # at 0.8, precision is 0.5
    other = (np.array([0.95, 0.85, 0.5]), np.array([1, 1, 0]))  # alone, its cut-off is 0.5 (2 of 3)
    assert verdict.cut_off([other], 0.6) == 0.5
    assert verdict.cut_off([(p, labels), other], 0.6) == 0.85  # below it, the first set falls to 0.5
    assert verdict.cut_off([(p, np.zeros(5))], 0.5) > 0.9  # never reached: nothing is a yes


def test_the_matches_hint_moves_whole_photo_scores_but_no_verdict(demo_index, demo, monkeypatch):
    """rerank.hint reorders unverified whole photos; what a result is judged by stays the CNN and the fit."""
    cat = demo["gallery"] / "cat-1.jpg"

    def results(conf, *query):
        monkeypatch.setattr(demo_index, "search_conf", conf)
        return {hit.id: hit for hit in demo_index.search(*query, top=100)}  # the whole gallery

    for query in ((cat,), ([demo["query"], cat], [demo["box"], None]), (demo["query"], [demo["box"]])):
        hinted, plain = results("default", *query), results("inlier-in-centre", *query)  # the step before
        assert hinted.keys() == plain.keys()
        for id, hit in hinted.items():
            assert (hit.evidence, hit.query_photo, hit.match) == (plain[id].evidence, plain[id].query_photo, plain[id].match)
            assert hit.similarity == pytest.approx(plain[id].similarity)
            assert hit.confidence == pytest.approx(plain[id].confidence)
        lifted = [id for id, hit in hinted.items() if hit.score > plain[id].score + 1e-9]
        assert bool(lifted) == (len(query) == 1 or query[1][-1] is None)  # a boxed query alone: no hint


# ---- several query photos --------------------------------------------------------------------------
def test_several_photos_of_an_object_search_together(demo_index, demo):
    cat = demo["gallery"] / "cat-1.jpg"
    together = demo_index.search([demo["query"], cat], [demo["box"], None], top=10)
    found = {hit.id: hit.query_photo for hit in together}
    assert set(demo["relevant"]) <= set(found) and found["cup-2"] == found["cup-3"] == 0
    assert found.get("cat-2") == found.get("cat-3") == 1
    assert "query_photo" in together[0].to_dict()
    alone = demo_index.search(demo["query"], [demo["box"]], top=6)
    assert all(hit.query_photo is None for hit in alone)
    with pytest.raises(SpotitError, match="2 query photos but 1 entries of boxes"):
        demo_index.search([demo["query"], cat], [demo["box"]])


def test_the_cli_takes_a_box_per_query_photo(demo_index, demo, capsys):
    box = ",".join(map(str, demo["box"]))
    args = ["search", str(demo["query"]), str(demo["gallery"] / "cat-1.jpg"), "--index", str(demo_index.store.root),
            "--quiet"]
    assert main([*args, "--box", box]) == 2
    assert "give one --box per photo" in capsys.readouterr().err
    assert main([*args, "--box", box, "--box", "whole", "--top", "8", "--matches"]) == 0
    out = capsys.readouterr().out
    assert "(query photo 1)" in out and "(query photo 2)" in out and " no " not in out
    assert main(["search", str(demo["query"]), "--box", "whole", "--index", str(demo_index.store.root), "--json",
                 "--quiet"]) == 0
    assert '"boxes": []' in capsys.readouterr().out


# ---- a scope ---------------------------------------------------------------------------------------
def dated(path, source, when: str | None):
    """Save `source` at `path` with an EXIF DateTimeOriginal of `when` ("2024:06:01 10:00:00")."""
    path.parent.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    if when:
        exif.get_ifd(0x8769)[0x9003] = when
    Image.open(source).convert("RGB").save(path, exif=exif.tobytes())
    return path


@pytest.fixture(scope="module")
def dated_index(demo, tmp_path_factory):
    root = tmp_path_factory.mktemp("dated")
    photos = sorted(demo["gallery"].glob("*.jpg"))
    for i, photo in enumerate(photos):
        year = 2022 + i % 3
        folder = "unsorted" if i % 5 == 4 else str(year)
        dated(root / "gallery" / folder / photo.name, photo, None if i % 5 == 4 else f"{year}:0{1 + i % 9}:15 12:00:00")
    index = Index.create(root / "index", root / "gallery", ["cnn"])
    index.update(progress=False)
    return index


def test_under_since_and_until_restrict_the_search(dated_index, demo):
    everything = dated_index.search(demo["query"], top=None)
    assert len(everything) == len(dated_index)
    in_2023 = dated_index.search(demo["query"], top=None, under="2023")
    assert in_2023 and all(hit.id.startswith("2023/") for hit in in_2023)
    assert [h.id for h in in_2023] == [h.id for h in everything if h.id.startswith("2023/")]
    absolute = dated_index.search(demo["query"], top=None, under=str(dated_index.gallery / "2023"))
    assert [h.id for h in absolute] == [h.id for h in in_2023]
    summer = dated_index.search(demo["query"], top=None, since="2022-05-01", until=dt.date(2023, 12, 31))
    assert summer and all(hit.id[:4] in ("2022", "2023") and not hit.id.startswith("unsorted") for hit in summer)
    dates = {hit.id: taken(hit.path) for hit in summer}
    assert all(parse_date("2022-05-01") <= when <= parse_date("2023-12-31", end=True) for when in dates.values())
    assert dated_index.search(demo["query"], top=3, under="no-such-folder") == []


def test_a_hybrid_search_keeps_to_its_scope_after_query_expansion(gallery_copy, demo, tmp_path, capsys):
    (gallery_copy / "sub").mkdir()
    for name in ("cup-1.jpg", "cup-2.jpg"):
        (gallery_copy / name).rename(gallery_copy / "sub" / name)
    index = Index.create(tmp_path / "index", gallery_copy, ["hybrid"])
    index.update(progress=False)
    everywhere = [hit.id for hit in index.search(demo["query"], [demo["box"]], top=5)]
    assert {"sub/cup-1", "sub/cup-2", "cup-3"} <= set(everywhere)
    scoped = index.search(demo["query"], [demo["box"]], top=5, under="sub")
    assert [hit.id for hit in scoped] == ["sub/cup-1", "sub/cup-2"] or [hit.id for hit in scoped] == ["sub/cup-2", "sub/cup-1"]
    box = ",".join(map(str, demo["box"]))
    # the CLI: an absolute folder, a bare --matches before the query, a scope that holds nothing
    assert main(["search", "--matches", str(demo["query"]), "--box", box, "--index", str(tmp_path / "index"),
                 "--under", str(gallery_copy / "sub"), "--quiet"]) == 0
    listed = capsys.readouterr().out
    assert "sub/cup-1" in listed and "cup-3" not in listed
    assert main(["search", str(demo["query"]), "--index", str(tmp_path / "index"), "--under", "nowhere", "--quiet"]) == 0
    assert "no indexed photo is in that scope" in capsys.readouterr().out
    assert main(["search", str(demo["query"]), "--index", str(tmp_path / "index"), "--under", "/etc", "--quiet"]) == 2
    assert "not inside the gallery" in capsys.readouterr().err


@pytest.mark.parametrize("options, message", [
    ({"since": "last week"}, "--since last week: not a date"),
    ({"since": "2024-02-01", "until": "2024-01-01"}, "--since is after --until"),
    ({"under": "../elsewhere"}, "inside the gallery"),
    ({"under": "/"}, "not inside the gallery"),
])
def test_a_bad_scope_is_said_plainly(dated_index, demo, options, message):
    with pytest.raises(SpotitError, match=message):
        dated_index.search(demo["query"], **options)


def test_dates_survive_a_reopened_index_and_the_cli_scopes_too(dated_index, demo, capsys):
    assert main(["search", str(demo["query"]), "--index", str(dated_index.store.root), "--under", "2024", "--since",
                 "2024-01-01", "--top", "20", "--quiet"]) == 0
    ranked = [line.split()[1] for line in capsys.readouterr().out.splitlines()[1:]]
    assert ranked and all(name.startswith("2024/") for name in ranked)


# ---- a watched gallery -----------------------------------------------------------------------------
def wait_until(check, seconds=90):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.3)
    return False


@pytest.mark.slow
@pytest.mark.parametrize("how", [[], ["--watch-poll", "0.5"]], ids=["events", "polling"])
def test_a_watched_gallery_keeps_its_index_current(demo, tmp_path, how):
    gallery, index_dir = tmp_path / "gallery", tmp_path / "index"
    shutil.copytree(demo["gallery"], gallery)
    process = subprocess.Popen([*SPOTIT, "index", str(gallery), "--index", str(index_dir), "--method", "cnn", "--quiet",
                                "--watch", "--watch-settle", "0.3", *how], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        names = lambda: set(Store.open(index_dir).names()) if Store.exists(index_dir) else set()  # noqa: E731
        assert wait_until(lambda: len(names()) == 20)
        shutil.copy(gallery / "cat-1.jpg", gallery / "added.jpg")
        (gallery / "album").mkdir()
        (gallery / "cup-1.jpg").rename(gallery / "album" / "cup-1.jpg")
        (gallery / "scene-1.jpg").unlink()
        (gallery / ".hidden.jpg").write_bytes(b"not even a photo")
        assert wait_until(lambda: {"added.jpg", "album/cup-1.jpg"} <= names() and not {"cup-1.jpg", "scene-1.jpg"} & names())
        assert len(names()) == 20
        hits = Index.open(index_dir).search(gallery / "cat-1.jpg", top=2)
        assert {hit.id for hit in hits} == {"cat-1", "added"}
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert ("polling every 0.5 s" if how else "file events") in out and "stopped watching" in out
    assert "Traceback" not in err


def test_watch_options_are_checked(demo, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["index", str(demo["gallery"]), "--index", str(tmp_path / "i"), "--watch", "--watch-poll", "0"])
    assert "--watch-poll: 0 must be at least 0.1" in capsys.readouterr().err
    assert main(["index", str(demo["gallery"]), "--index", str(tmp_path / "i"), "--watch-settle", "1"]) == 2
    assert "apply with --watch only" in capsys.readouterr().err and not (tmp_path / "i").exists()
