"""`spotit serve`'s HTTP API through FastAPI's TestClient: every route, and every refusal."""

import io
import json
import os
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from spotit import Index
from spotit.app import Service, create_app
from spotit.cli import main

LOCAL = "http://127.0.0.1"


def client_for(index, **options) -> TestClient:
    return TestClient(create_app(Service(index), **options), base_url=LOCAL)


@pytest.fixture(scope="module")
def api(demo_index):
    with client_for(demo_index) as client:
        yield client


def jpeg_bytes(path, exif_orientation=None) -> bytes:
    image = Image.open(path)
    out = io.BytesIO()
    if exif_orientation is None:
        image.save(out, "JPEG", quality=95)
    else:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        image.save(out, "JPEG", quality=95, exif=exif)
    return out.getvalue()


def search(client, data: bytes, boxes=None, **fields):
    form = {k: str(v) for k, v in fields.items()}
    if boxes is not None:
        form["boxes"] = boxes if isinstance(boxes, str) else json.dumps(boxes)
    return client.post("/api/search", files={"image": ("query.jpg", data, "image/jpeg")}, data=form)


def test_search_returns_the_cli_json_with_urls_and_located_objects(api, demo, demo_index):
    response = search(api, demo["query"].read_bytes(), [list(demo["box"])], top=5)
    assert response.status_code == 200, response.text
    answer = response.json()
    expected = demo_index.search(demo["query"], [demo["box"]], top=5)
    assert [r["id"] for r in answer["results"]] == [r.id for r in expected]
    assert answer["method"] == "hybrid" and answer["boxes"] == [list(demo["box"])] and answer["query"] == "query.jpg"
    first = answer["results"][0]
    assert first["id"] in demo["relevant"] and len(first["quad"]) == 4 and len(first["box"]) == 4
    assert first["thumbnail_url"] == f"/api/thumbnails/{first['id']}" and first["image_url"] == f"/api/images/{first['id']}"
    assert (first["width"], first["height"]) == Image.open(first["path"]).size
    assert api.get(first["thumbnail_url"]).status_code == 200


def test_method_and_top_are_honoured(api, demo):
    answer = search(api, demo["query"].read_bytes(), None, top=3, method="cnn").json()
    assert answer["method"] == "cnn" and len(answer["results"]) == 3 and answer["boxes"] == []
    assert all("inliers" not in r for r in answer["results"])


def test_exif_orientation_of_the_query_is_honoured(api, demo, tmp_path):
    """The same photo stored turned, with an EXIF tag saying so, searches like the upright one with the same box."""
    upright = Image.open(demo["query"])
    turned = tmp_path / "turned.jpg"
    upright.transpose(Image.Transpose.ROTATE_90).save(turned, quality=95)  # stored turned left...
    data = jpeg_bytes(turned, exif_orientation=6)  # ...and tagged "turn right to view"
    a = search(api, demo["query"].read_bytes(), [list(demo["box"])]).json()
    b = search(api, data, [list(demo["box"])]).json()
    assert (b["width"], b["height"]) == upright.size
    assert {r["id"] for r in a["results"][:3]} == {r["id"] for r in b["results"][:3]} == set(demo["relevant"])


@pytest.mark.parametrize("boxes, reason", [
    ("not json", "boxes is not JSON"),
    ('{"x": 1}', "must be a list"),
    ("[[1, 2, 3]]", "four numbers"),
    ('[[1, 2, "a", 4]]', "four numbers"),
    ("[[1, 2, 0, 4]]", "above 0"),
    ("[[10000, 10000, 50, 50]]", "outside"),
    (json.dumps([[1, 1, 5, 5]] * 21), "at most 20"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
])
def test_bad_boxes_get_422_with_the_reason(api, demo, boxes, reason):
    response = search(api, demo["query"].read_bytes(), boxes)
    assert response.status_code == 422
    assert reason in response.json()["detail"]


def test_the_method_name_is_not_case_sensitive(api, demo):
    assert search(api, demo["query"].read_bytes(), None, top=2, method=" HYBRID").json()["method"] == "hybrid"


@pytest.mark.parametrize("fields, reason", [
    ({"top": 0}, "top"), ({"top": "ten"}, "top"), ({"top": 5000}, "top"),
    ({"method": "magic"}, "unknown search method"),
])
def test_bad_top_or_method_get_422(api, demo, fields, reason):
    response = search(api, demo["query"].read_bytes(), None, **fields)
    assert response.status_code == 422 and reason in response.json()["detail"]


def test_a_method_the_index_does_not_serve_is_refused(demo):
    index = Index.create(demo["gallery"].parent / "cnn-only-index", demo["gallery"], ["cnn"])
    index.update(progress=False)
    with client_for(index) as client:
        response = search(client, demo["query"].read_bytes(), None, method="hybrid")
    assert response.status_code == 422 and "serves cnn, not hybrid" in response.json()["detail"]


def test_a_missing_image_field_gets_422(api):
    response = api.post("/api/search", data={"top": "3"})
    assert response.status_code == 422 and "image" in response.json()["detail"]


@pytest.mark.parametrize("payload, reason", [
    (b"this is not an image at all", "not an image"),
    (b"", "not an image"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "query.jpg"),
])
def test_a_non_image_gets_400(api, payload, reason):
    response = search(api, payload)
    assert response.status_code == 400 and reason in response.json()["detail"].lower()


def test_a_pixel_bomb_gets_400_before_decoding(api):
    out = io.BytesIO()
    Image.new("L", (20000, 20000)).save(out, "PNG")  # 400 MP in a few hundred kB
    started = time.perf_counter()
    response = search(api, out.getvalue())
    assert response.status_code == 400 and "over the limit" in response.json()["detail"]
    assert time.perf_counter() - started < 5


def test_an_upload_over_the_limit_gets_413(demo_index, demo):
    limit = 2 * demo["query"].stat().st_size
    with client_for(demo_index, max_upload=limit) as client:
        big = os.urandom(limit + 1)
        response = search(client, big)
        assert response.status_code == 413 and "larger than the limit" in response.json()["detail"]

        def chunks():  # no Content-Length: counted as it arrives
            for _ in range(20):
                yield os.urandom(limit // 10)
        response = client.post("/api/search", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=x"})
        assert response.status_code == 413
        assert search(client, demo["query"].read_bytes()).status_code == 200  # under the limit: served


def test_photos_and_thumbnails_are_served_upright(api, demo_index):
    photo_id = demo_index.snapshot().ids[0]
    full = api.get(f"/api/images/{photo_id}")
    assert full.status_code == 200 and full.headers["content-type"] == "image/jpeg"
    width, height = demo_index.snapshot().sizes[0]
    assert Image.open(io.BytesIO(full.content)).size == (width, height)
    thumb = api.get(f"/api/thumbnails/{photo_id}", params={"size": 64})
    assert max(Image.open(io.BytesIO(thumb.content)).size) == 64
    again = api.get(f"/api/thumbnails/{photo_id}", params={"size": 64}, headers={"If-None-Match": thumb.headers["etag"]})
    assert again.status_code == 304
    for size in (0, 5000, "big"):
        assert api.get(f"/api/thumbnails/{photo_id}", params={"size": size}).status_code == 422


def test_a_photo_turned_by_exif_in_the_gallery_is_served_upright(served_copy):
    gallery = served_copy.gallery
    stored = Image.new("RGB", (120, 80), (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 8  # "turn left to view": shown 80 wide, 120 high
    stored.save(gallery / "tagged.jpg", exif=exif)
    served_copy.update(progress=False)
    with client_for(served_copy) as client:
        response = client.get("/api/images/tagged")
    assert response.status_code == 200 and Image.open(io.BytesIO(response.content)).size == (80, 120)


@pytest.mark.parametrize("path", [
    "/api/images/nope", "/api/images/..%2F..%2Fetc%2Fpasswd", "/api/images/%2Fetc%2Fpasswd",
    "/api/images//etc/passwd", "/api/thumbnails/..%2Fgallery%2Fcup-1", "/api/images/%2e%2e/%2e%2e/etc/passwd",
])
def test_unknown_ids_and_traversal_tricks_get_404(api, path):
    response = api.get(path)
    assert response.status_code == 404, (path, response.status_code)
    assert b"root:" not in response.content


def test_a_symlink_in_the_gallery_pointing_outside_is_not_served(served_copy, tmp_path):
    secret = tmp_path / "secret.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(secret)
    (served_copy.gallery / "link.jpg").symlink_to(secret)
    served_copy.update(progress=False)
    assert "link" in served_copy.snapshot().ids  # indexed: its features are the gallery's business
    with client_for(served_copy) as client:
        hits = search(client, secret.read_bytes(), top=1).json()["results"]
        assert hits[0]["id"] == "link" and hits[0]["image_url"] is None and "outside the gallery" in hits[0]["unavailable"]
        for route in ("images", "thumbnails"):
            response = client.get(f"/api/{route}/link")
            assert response.status_code == 404 and "outside the gallery" in response.json()["detail"]


def test_status_says_what_the_index_holds(api, demo_index):
    status = api.get("/api/status").json()
    assert status["photos"] == len(demo_index) and status["gallery"] == str(demo_index.gallery)
    assert set(status["methods"]) == set(demo_index.methods) and status["default_method"] == "hybrid"
    assert status["last_update"] and status["update"] == {"running": False, "by": None}


def test_an_update_runs_in_the_background_with_progress_and_searches_go_on(served_copy, demo):
    gallery = served_copy.gallery
    before = len(served_copy)
    for i, photo in enumerate(sorted(gallery.iterdir())[:6]):
        Image.open(photo).save(gallery / f"new-{i}.png")
    with client_for(served_copy) as client:
        response = client.post("/api/index")
        assert response.status_code == 202 and response.json()["update"]["running"]
        assert client.post("/api/index").status_code == 409  # one at a time
        seen = []
        while True:
            status = client.get("/api/status").json()
            seen.append((status["update"].get("done"), status["update"].get("total")))
            assert search(client, demo["query"].read_bytes(), [list(demo["box"])], top=3).status_code == 200
            if not status["update"]["running"]:
                break
        assert status["photos"] == before + 6 and status["update"]["report"]["added"] == 6
        assert any(total == 6 for _, total in seen) and seen[-1] == (6, 6)


def test_an_update_is_refused_while_another_process_updates(served_copy):
    from spotit.storage.lock import WriterLock

    with client_for(served_copy) as client, WriterLock(served_copy.store.root).acquire():
        response = client.post("/api/index")
        assert response.status_code == 409 and "is updating this index" in response.json()["detail"]
        assert client.get("/api/status").json()["update"]["by"]


def test_a_failed_update_says_why_in_the_status_and_keeps_the_index(served_copy):
    before = len(served_copy)
    served_copy.gallery.rename(served_copy.gallery.with_name("moved-away"))
    with client_for(served_copy) as client:
        assert client.post("/api/index").status_code == 202
        while (status := client.get("/api/status").json())["update"]["running"]:
            time.sleep(0.1)
    assert str(served_copy.gallery) in status["update"]["error"] and status["photos"] == before


def test_the_page_and_the_docs_use_only_local_assets(api):
    page = api.get("/")
    assert page.status_code == 200 and "<button type=\"submit\" id=\"search\">Search</button>" in page.text
    for asset in ("/static/app.js", "/static/app.css", "/static/icon.svg", "/docs-assets/swagger-ui-bundle.js"):
        response = api.get(asset)
        assert response.status_code == 200 and b"cdn." not in response.content[:100_000], asset
    for text in (page.text, api.get("/docs").text):
        assert "https://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "") and "http://" not in text
    assert api.head("/").status_code == 200
    schema = api.get("/openapi.json").json()
    assert schema["openapi"].startswith("3.0")  # what the offline swagger-ui reads
    assert {"/api/search", "/api/status", "/api/index", "/api/images/{photo_id}",
            "/api/thumbnails/{photo_id}"} <= set(schema["paths"])


def test_a_token_is_checked_on_every_request(demo_index, demo):
    with client_for(demo_index, token="s3cret", loopback_only=False) as client:
        for path in ("/", "/api/status", "/docs", "/static/app.js", "/openapi.json"):
            assert client.get(path).status_code == 401, path
        assert client.get("/api/status", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/api/status", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert search(client, demo["query"].read_bytes()).status_code == 401
        # the page's link: the token moves into a cookie and out of the address
        response = client.get("/?token=s3cret", follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"] == "/"
        assert client.get("/api/status").status_code == 200  # the cookie now carries it
        client.cookies.clear()
        assert client.get("/api/status?token=wrong").status_code == 401


def test_changes_sent_from_another_sites_page_are_refused(api, demo):
    for response in (api.post("/api/index", headers={"Origin": "http://evil.example"}),
                     api.post("/api/search", headers={"Origin": "http://127.0.0.1:9"},
                              files={"image": ("q.jpg", demo["query"].read_bytes())})):
        assert response.status_code == 403 and "refused" in response.json()["detail"]
    same = search(api, demo["query"].read_bytes(), None, top=1)  # TestClient sends no Origin, as curl
    assert same.status_code == 200
    own_page = api.post("/api/search", headers={"Origin": LOCAL}, files={"image": ("q.jpg", demo["query"].read_bytes())})
    assert own_page.status_code == 200


def test_the_token_is_kept_out_of_the_access_log():
    import logging

    from spotit.app.guard import RedactToken

    for path in ("/?token=s3cret&x=1", "/?%74oken=s3cret"):
        record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                                   ("127.0.0.1:5", "GET", path, "1.1", 303), None)
        assert RedactToken().filter(record) and "s3cret" not in record.getMessage()
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, "%s", ("/api/thumbnails/a?size=64",), None)
    assert RedactToken().filter(record) and record.getMessage() == "/api/thumbnails/a?size=64"


def test_without_a_token_only_requests_to_localhost_are_answered(demo_index):
    with client_for(demo_index) as client:
        assert client.get("/api/status", headers={"Host": "evil.example:8000"}).status_code == 403
        assert client.get("/api/status", headers={"Host": "localhost:8000"}).status_code == 200


@pytest.mark.parametrize("argv, message", [
    (["serve", "--host", "0.0.0.0"], "give --token"),
    (["serve", "--host", "0.0.0.0", "--token", "t", "--no-auth"], "not both"),
    (["serve", "--index", "/nonexistent/index"], "index"),
])
def test_serve_refuses_unsafe_or_impossible_settings(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_serve_says_when_the_port_is_taken(demo_index, capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["serve", "--index", str(demo_index.store.root), "--port", str(port)]) == 2
    assert "choose another --port" in capsys.readouterr().err


# ---- a real photo library: verdicts, several photos, a scope, formats browsers cannot show, a watch -----
def test_results_carry_a_verdict_and_matches_stop_at_the_cut_off(api, demo):
    ranked = search(api, demo["query"].read_bytes(), [list(demo["box"])], top=10).json()["results"]
    assert {r["match"] for r in ranked} >= {"yes", "no"} and all(0 <= r["confidence"] <= 1 for r in ranked)
    sure = search(api, demo["query"].read_bytes(), [list(demo["box"])], top=10, matches="yes").json()["results"]
    assert [r["id"] for r in sure] == [r["id"] for r in ranked if r["match"] == "yes"]
    response = search(api, demo["query"].read_bytes(), matches="always")
    assert response.status_code == 422 and "matches must be" in response.json()["detail"]


def test_several_query_photos_each_with_its_boxes(api, demo):
    files = [("image", ("query.jpg", demo["query"].read_bytes(), "image/jpeg")),
             ("image", ("cat.jpg", (demo["gallery"] / "cat-1.jpg").read_bytes(), "image/jpeg"))]
    response = api.post("/api/search", files=files, data={"boxes": json.dumps([[list(demo["box"])], []]), "top": "10"})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["query"] == ["query.jpg", "cat.jpg"] and answer["boxes"] == [[list(demo["box"])], []]
    assert {r["query_photo"] for r in answer["results"]} == {0, 1}
    flat = api.post("/api/search", files=files, data={"boxes": json.dumps([list(demo["box"])])})
    assert flat.status_code == 422 and "a list of boxes per photo" in flat.json()["detail"]


def test_a_search_can_be_scoped_to_a_folder_and_dates(api, demo):
    assert search(api, demo["query"].read_bytes(), under="no-such-folder").json()["results"] == []
    response = search(api, demo["query"].read_bytes(), since="yesterday")
    assert response.status_code == 422 and "2024-06-01" in response.json()["detail"]


def test_a_heic_query_gets_a_preview_and_is_searched(api, demo):
    heic = io.BytesIO()
    Image.open(demo["query"]).save(heic, "HEIF", quality=90)
    preview = api.post("/api/preview", files={"image": ("query.heic", heic.getvalue(), "image/heic")})
    assert preview.status_code == 200 and preview.headers["content-type"] == "image/jpeg"
    size = Image.open(demo["query"]).size
    assert (int(preview.headers["x-photo-width"]), int(preview.headers["x-photo-height"])) == size
    assert Image.open(io.BytesIO(preview.content)).size == size  # under 2048 pixels: whole
    found = api.post("/api/search", files={"image": ("query.heic", heic.getvalue(), "image/heic")},
                     data={"boxes": json.dumps([list(demo["box"])]), "top": "3"}).json()["results"]
    assert {r["id"] for r in found} == set(demo["relevant"])
    bad = api.post("/api/preview", files={"image": ("x.heic", b"not a photo", "image/heic")})
    assert bad.status_code == 400


def test_serve_watch_keeps_the_index_current(served_copy):
    gallery, before = served_copy.gallery, len(served_copy)
    service = Service(served_copy)
    service.watch(settle=0.2, poll=None)
    with TestClient(create_app(service), base_url=LOCAL) as client:
        assert client.get("/api/status").json()["watching"] == "file events"
        Image.open(gallery / "cat-1.jpg").save(gallery / "watched.png")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and client.get("/api/status").json()["photos"] != before + 1:
            time.sleep(0.3)
        status = client.get("/api/status").json()
    assert status["photos"] == before + 1 and "watched.png" in served_copy.store.reload().names()
    assert service.watcher.stopped.is_set()  # the server's shutdown stopped it
