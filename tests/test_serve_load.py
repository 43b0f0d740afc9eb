"""A bounded load test on 127.0.0.1: 300 searches from 8 clients, an update running for part of it, no error.

The figures (latency, throughput) are measured by benchmarks/serve.py into RESULTS.md; here only the
behaviour is asserted."""

import json

import pytest
from PIL import Image

from spotit.app import Service, create_app
from spotit.app.load import run_load
from spotit.errors import SpotitError


@pytest.mark.slow
def test_300_searches_from_8_clients_during_an_update_all_succeed(serve, served_copy, demo):
    gallery = served_copy.gallery
    for i, photo in enumerate(sorted(gallery.iterdir())[:12]):  # work for the update: 12 new photos
        Image.open(photo).save(gallery / f"new-{i}.png")
    base = serve(create_app(Service(served_copy)))
    figures = run_load(base, [(demo["query"].read_bytes(), [list(demo["box"])])], searches=300, clients=8,
                       update_after=20)
    print(json.dumps(figures))
    assert figures["errors"] == 0, figures["error_samples"]
    assert figures["ok"] == 300
    assert figures["searches_during_update"] >= 8  # the update really overlapped the searches
    assert len(served_copy) == 32


def test_the_load_test_only_targets_this_machine(demo):
    with pytest.raises(SpotitError, match="only targets this machine"):
        run_load("http://example.org:8000", [(b"", None)], searches=1, clients=1)
    with pytest.raises(SpotitError, match="searches must lie"):
        run_load("http://127.0.0.1:1", [(b"", None)], searches=0)


def test_a_slow_client_does_not_block_the_others(serve, demo_index, demo):
    """A client that sends half an upload and stalls holds no worker: other searches are answered meanwhile."""
    import socket
    import time
    from urllib.parse import urlsplit

    import httpx

    base = serve(create_app(Service(demo_index)))
    address = urlsplit(base)
    stalled = []
    for _ in range(4):  # more stalled uploads than the server has search slots
        sock = socket.create_connection((address.hostname, address.port))
        sock.sendall(b"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
                     b"boundary=x\r\nContent-Length: 100000\r\n\r\n--x\r\nContent-Disposition: form-data; "
                     b'name="image"; filename="q.jpg"\r\n\r\n' + b"\xff" * 1000)
        stalled.append(sock)
    try:
        started = time.perf_counter()
        response = httpx.post(base + "/api/search", files={"image": ("q.jpg", demo["query"].read_bytes())},
                              data={"boxes": json.dumps([list(demo["box"])])}, timeout=30)
        assert response.status_code == 200 and response.json()["results"]
        assert time.perf_counter() - started < 10
    finally:
        for sock in stalled:
            sock.close()


def test_an_upload_that_stalls_is_answered_408_and_dropped(serve, demo_index, monkeypatch):
    import socket
    from urllib.parse import urlsplit

    from spotit.app import guard

    monkeypatch.setattr(guard, "BODY_IDLE_S", 1)
    address = urlsplit(serve(create_app(Service(demo_index))))
    with socket.create_connection((address.hostname, address.port), timeout=20) as sock:
        sock.sendall(b"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\npartial")
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408")


def test_a_status_that_fails_during_the_update_is_counted_as_an_error():
    import httpx

    from spotit.app.load import _UpdateWatch

    def server(request):
        if request.method == "POST":
            return httpx.Response(202, json={"running": True})
        return httpx.Response(422, json={"detail": "the catalogue holds a newer commit"})

    watch = _UpdateWatch(httpx.Client(base_url="http://127.0.0.1:1", transport=httpx.MockTransport(server)))
    watch.start()
    watch.thread.join(10)
    assert not watch.thread.is_alive() and len(watch.errors) == 1
    assert watch.errors[0].startswith("GET /api/status: HTTPStatusError") and "422" in watch.errors[0]
