"""Beyond one machine, measured on one: indexing on Ray (local, 2 workers) against the threaded path, and
queries with the shortlist in Milvus Lite against faiss (issue: Milvus and Ray).

    python benchmarks/cluster.py                     # clutter-hard-dev
    python benchmarks/cluster.py --set holidays-dev

Indexing: `spotit index GALLERY --index NEW [--ray]` in a fresh process each, run in turn; the images/s
that spotit reports (extraction only) and the whole command's wall time (Ray's start included).
Queries: `spotit eval SET --method hybrid` on the set's hybrid index from benchmarks/run.py, and on a copy
of it switched to a Milvus Lite file (`--vectors regions.db`: the regions are written to Milvus, no photo
is extracted again). Writes benchmarks/cluster.json and RESULTS.md.
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import BENCH_DIR, RESULTS_JSON, available_sets, machine, run, write_markdown  # noqa: E402

from spotit import Index  # noqa: E402

CLUSTER_JSON = HERE / "cluster.json"


def index_once(gallery: Path, target: Path, extra: list[str]) -> dict:
    command = [sys.executable, "-m", "spotit.cli", "index", str(gallery), "--index", str(target), "--quiet", *extra]
    started = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    wall = time.perf_counter() - started
    rate = float(re.search(r"([\d.]+) images/s", done.stdout).group(1))
    return {"command": "spotit index GALLERY --index NEW " + " ".join(extra), "images_per_s": rate, "wall_s": round(wall, 1)}


def evaluate(root: Path, index_dir: Path) -> dict:
    out = run(["eval", str(root), "--method", "hybrid", "--index", str(index_dir), "--json", "--quiet"])
    result = json.loads(out.strip().splitlines()[-1])
    return {k: result[k] for k in ("map", "query_s_median", "query_s_p95") if k in result}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", default="clutter-hard-dev")
    args = parser.parse_args()
    root = available_sets([args.set]).get(args.set)
    bench_index = BENCH_DIR / "indexes" / f"{args.set}-hybrid"
    if root is None or not bench_index.is_dir():
        raise SystemExit(f"needs {args.set} and its hybrid index: python benchmarks/run.py --sets {args.set} --methods hybrid")
    gallery = Path(Index.open(bench_index).gallery)
    figures = {"set": args.set, "photos": len(Index.open(bench_index)), "machine": machine(), "date": time.strftime("%Y-%m-%d")}
    with tempfile.TemporaryDirectory(prefix="spotit-cluster-bench-") as work:
        work = Path(work)
        figures["threads"] = index_once(gallery, work / "threads", [])
        figures["ray"] = index_once(gallery, work / "ray", ["--ray"])
        lite = work / "lite"
        shutil.copytree(bench_index, lite, ignore=shutil.ignore_patterns("write.lock"))
        # in a process of its own: Milvus Lite lets one process at a time hold its file
        run(["index", str(gallery), "--index", str(lite), "--vectors", str(work / "regions.db"), "--quiet"])
        figures["faiss"] = evaluate(root, bench_index)
        figures["milvus_lite"] = evaluate(root, lite)
    print(json.dumps(figures, indent=1))
    CLUSTER_JSON.write_text(json.dumps(figures, indent=1) + "\n")
    write_markdown(json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.is_file() else {})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
