"""`spotit serve` under load: latency and throughput of concurrent searches over HTTP, with an update
running for part of the time (issue: spotit serve).

    python benchmarks/serve.py                  # clutter-hard-dev's boxed queries, 300 searches, 8 clients
    python benchmarks/serve.py --set holidays-dev --searches 600

Serves a private copy of the set's hybrid index (built by benchmarks/run.py) and gallery, in a separate
`spotit serve` process on 127.0.0.1, after adding 40 photos to the copied gallery so that the update
started part-way has work. Runs one client alone (unloaded latency), then the clients at once without and
with the update. Writes
benchmarks/serve.json and RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import BENCH_DIR, RESULTS_JSON, available_sets, machine, write_markdown  # noqa: E402

from spotit import Index  # noqa: E402
from spotit.app.load import run_load  # noqa: E402
from spotit.evaluation.datasets import load_dataset  # noqa: E402

SERVE_JSON = HERE / "serve.json"
NEW_PHOTOS = 40


def private_copy(index_dir: Path, gallery: Path, work: Path) -> Path:
    """A copy of the index, re-pointed to a copy of the gallery with NEW_PHOTOS more photos."""
    copy = work / "gallery"
    shutil.copytree(gallery, copy)
    for i, photo in enumerate(sorted(p for p in copy.iterdir() if p.is_file())[:NEW_PHOTOS]):
        Image.open(photo).convert("RGB").save(copy / f"zz-new-{i}.jpg", quality=90)
    index_copy = work / "index"
    shutil.copytree(index_dir, index_copy, ignore=shutil.ignore_patterns("write.lock"))
    Index.open_or_create(index_copy, copy, ["hybrid"], moved=True)
    return index_copy


def start_server(index_dir: Path) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-m", "spotit.cli", "serve", "--index", str(index_dir), "--port", "0",
                                "--quiet"], stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    found = re.search(r"at (http://127\.0\.0\.1:\d+)/", line)
    if not found:
        process.kill()
        raise SystemExit(f"spotit serve did not start: {line!r}")
    return process, found.group(1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", default="clutter-hard-dev")
    parser.add_argument("--searches", type=int, default=300)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    root = available_sets([args.set]).get(args.set)
    index_dir = BENCH_DIR / "indexes" / f"{args.set}-hybrid"
    if root is None or not index_dir.is_dir():
        raise SystemExit(f"needs {args.set} and its hybrid index: run python benchmarks/run.py --sets {args.set} --methods hybrid")
    dataset = load_dataset(root)
    queries = [(q.path.read_bytes(), [list(b) for b in q.boxes] or None) for q in dataset.queries]
    with tempfile.TemporaryDirectory(prefix="spotit-serve-bench-") as work:
        process, base = start_server(private_copy(index_dir, Path(Index.open(index_dir).gallery), Path(work)))
        try:
            alone = run_load(base, queries, searches=40, clients=1)
            busy = run_load(base, queries, searches=100, clients=args.clients)
            loaded = run_load(base, queries, searches=args.searches, clients=args.clients, update_after=30)
        finally:
            process.terminate()
            process.wait(30)
    figures = {"set": args.set, "photos": len(Index.open(index_dir)), "new_photos": NEW_PHOTOS, "machine": machine(),
               "date": time.strftime("%Y-%m-%d"), "alone": alone, "busy": busy, "loaded": loaded}
    print(json.dumps(figures, indent=1))
    SERVE_JSON.write_text(json.dumps(figures, indent=1) + "\n")
    write_markdown(json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.is_file() else {})
    return 0 if alone["errors"] == busy["errors"] == loaded["errors"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
