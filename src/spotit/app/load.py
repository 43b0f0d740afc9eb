"""A bounded load test of a running `spotit serve` on this machine: searches from concurrent clients,
optionally with an update started part-way, and the latency and throughput they saw.

    from spotit.app.load import run_load
    query = (open("mug.jpg", "rb").read(), [[120, 80, 200, 160]])  # a photo's bytes, its boxes (or None)
    figures = run_load("http://127.0.0.1:8000", [query], searches=300, clients=8, update_after=50)
"""

from __future__ import annotations

import json
import threading
import time
from urllib.parse import urlsplit

import httpx
import numpy as np

from ..errors import SpotitError
from .guard import LOOPBACK_HOSTS

MAX_SEARCHES = 10_000


def _check_target(base_url: str, searches: int, clients: int) -> None:
    if urlsplit(base_url).hostname not in LOOPBACK_HOSTS:
        raise SpotitError(f"the load test only targets this machine (127.0.0.1 or localhost), not {base_url}")
    if not 1 <= searches <= MAX_SEARCHES or not 1 <= clients <= 64:
        raise SpotitError(f"searches must lie in 1..{MAX_SEARCHES} and clients in 1..64")


class _UpdateWatch:
    """Starts an update through the API and notes when it ran, from the status, until it ends."""

    def __init__(self, client: httpx.Client):
        self.client, self.errors = client, []
        self.started = self.ended = None
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def start(self) -> None:
        response = self.client.post("/api/index")
        if response.status_code != 202:
            self.errors.append(f"POST /api/index: {response.status_code} {response.text[:200]}")
            return
        self.started = time.perf_counter()
        self.thread.start()

    def _watch(self) -> None:
        while True:
            try:
                response = self.client.get("/api/status")
                response.raise_for_status()
                status = response.json()["update"]
            except (httpx.HTTPError, ValueError, KeyError) as exc:  # the status must answer while an update runs
                self.errors.append(f"GET /api/status: {type(exc).__name__}: {exc}")
                return
            if not status["running"]:
                self.ended = time.perf_counter()
                if status.get("error"):
                    self.errors.append(f"update: {status['error']}")
                return
            time.sleep(0.2)


def run_load(base_url: str, queries: list[tuple[bytes, list | None]], searches: int = 300, clients: int = 8,
             method: str | None = None, top: int = 10, token: str | None = None, update_after: int | None = None,
             timeout: float = 600) -> dict:
    """Run `searches` searches, taking the (photo bytes, boxes) `queries` in turn, from `clients` threads, each
    with its own connection. With `update_after`, an update starts once that many searches have finished.
    Every answer but 200 with results is an error."""
    _check_target(base_url, searches, clients)
    if not queries:
        raise SpotitError("give at least one query")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    forms = [{"top": str(top), **({"boxes": json.dumps(boxes)} if boxes else {}), **({"method": method} if method else {})}
             for _, boxes in queries]
    tickets = iter(range(searches))
    lock = threading.Lock()
    done: list[tuple[float, float]] = []  # (start, end) of each successful search
    errors: list[str] = []
    watch = None
    deadline = time.perf_counter() + timeout

    def client_loop() -> None:
        nonlocal watch
        with httpx.Client(base_url=base_url, headers=headers, timeout=timeout) as client:
            while time.perf_counter() < deadline:
                with lock:
                    ticket = next(tickets, None)
                if ticket is None:
                    return
                start = time.perf_counter()
                try:
                    image, form = queries[ticket % len(queries)][0], forms[ticket % len(forms)]
                    response = client.post("/api/search", data=form, files={"image": ("query.jpg", image)})
                    ok = response.status_code == 200 and "results" in response.json()
                    problem = None if ok else f"{response.status_code} {response.text[:200]}"
                except (httpx.HTTPError, ValueError) as exc:
                    problem = f"{type(exc).__name__}: {exc}"
                end = time.perf_counter()
                with lock:
                    if problem:
                        errors.append(problem)
                    else:
                        done.append((start, end))
                    start_update = update_after is not None and watch is None and len(done) >= update_after
                    if start_update:
                        watch = _UpdateWatch(httpx.Client(base_url=base_url, headers=headers, timeout=timeout))
                if start_update:
                    watch.start()

    began = time.perf_counter()
    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    if watch is not None and watch.thread.is_alive():
        watch.thread.join(timeout)
    latencies = np.array([end - start for start, end in done])
    errors += watch.errors if watch else []
    result = {"searches": searches, "clients": clients, "ok": len(done), "errors": len(errors),
              "error_samples": errors[:5], "wall_s": round(wall, 2),
              "throughput_per_s": round(len(done) / wall, 2) if wall else None,
              "p50_s": round(float(np.percentile(latencies, 50)), 3) if len(done) else None,
              "p95_s": round(float(np.percentile(latencies, 95)), 3) if len(done) else None}
    if watch is not None and watch.started is not None:
        ended = watch.ended or time.perf_counter()
        during = [end - start for start, end in done if start < ended and end > watch.started]
        result.update(update_s=round(ended - watch.started, 2), searches_during_update=len(during),
                      p50_during_update_s=round(float(np.median(during)), 3) if during else None)
    return result
