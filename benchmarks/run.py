"""Run every method on every available benchmark set and write benchmarks/RESULTS.md.

    python benchmarks/run.py                      # all sets found, all methods
    python benchmarks/run.py --sets holidays-dev --methods cnn

Sets: the shared dev sets in ../shared/datasets (skipped when absent), and clutter-dev / clutter-5k, which
this script makes with `spotit bench make-clutter` (ukbench-dev objects in holidays-dev scenes) under
$SPOTIT_BENCH_DIR (default ~/spotit-bench), outside the repository. Each figure is kept in
benchmarks/results.json, so a partial run updates only what it measured.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "datasets"
BENCH_DIR = Path(os.environ.get("SPOTIT_BENCH_DIR", Path.home() / "spotit-bench"))
RESULTS_JSON = HERE / "results.json"
RESULTS_MD = HERE / "RESULTS.md"

# seed methods first; exhaustive SIFT is evaluated on an evenly spread sample of queries
METHODS = ["cnn", "sift", "hybrid"]
SIFT_QUERIES = {"holidays-dev": 30, "ukbench-dev": 100, "clutter-dev": 20}
# exhaustive SIFT over 5,000 photos: ~4 min per query and 20 min of indexing; left out of the default run
SKIP = {("sift", "clutter-5k")}
CLUTTER = {
    "clutter-dev": ["--seed", "0"],
    "clutter-5k": ["--seed", "1", "--distractor-scenes", "4820", "--distractor-objects", "65"],
    # clutter-hard-dev's conditions, with placements: where the objects truly lie (localisation)
    "clutter-hard-2": ["--seed", "2", "--hard"],
}


def available_sets(wanted: list[str] | None) -> dict[str, Path]:
    sets = {}
    for name in ("holidays-dev", "ukbench-dev", "clutter-hard-dev"):
        if (SHARED / name).is_dir():
            sets[name] = SHARED / name
        else:
            print(f"skipping {name}: {SHARED / name} is absent")
    if (SHARED / "ukbench-dev").is_dir() and (SHARED / "holidays-dev").is_dir():
        for name, extra in CLUTTER.items():
            if wanted and name not in wanted:
                continue
            target = BENCH_DIR / name
            if not (target / "groundtruth.json").is_file():
                run(["bench", "make-clutter", str(SHARED / "ukbench-dev"), str(SHARED / "holidays-dev"), str(target), *extra, "--quiet"])
            sets[name] = target
    return {k: v for k, v in sets.items() if not wanted or k in wanted}


def run(args: list[str]) -> str:
    command = [sys.executable, "-m", "spotit.cli", *args]
    print("$ spotit " + " ".join(args), flush=True)
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"spotit {' '.join(args)} failed with exit code {done.returncode}")
    return done.stdout


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {model}, Python {platform.python_version()}"


def write_markdown(results: dict) -> None:
    order = list(dict.fromkeys(METHODS + sorted(r["method"] for r in results.values())))
    rows = sorted(results.values(), key=lambda r: (order.index(r["method"]), r["dataset"]))

    def fmt(value, digits=3):
        return "–" if value is None else f"{value:.{digits}f}"

    lines = [
        "# Benchmark results",
        "",
        f"Measured {datetime.date.today().isoformat()} on {machine()}.",
        "Regenerate with `python benchmarks/run.py` (see its docstring). Sets: holidays-dev, ukbench-dev and",
        "clutter-hard-dev from ../shared/datasets; clutter-dev, clutter-5k and clutter-hard-2 (`--hard`: shared",
        "scenes, half the views turned up to 180 degrees) made by `spotit bench make-clutter` from the first two.",
        "Localisation: the share of verified relevant results whose box overlaps the pasted view's box with",
        "IoU >= 0.5 (sets with placements), and the boxes drawn on non-relevant results in the top 10s.",
        "`queries` below the set's full count means an evenly spread sample (exhaustive SIFT is slow).",
        "mAP follows the Holidays/Oxford protocol (query removed, trapezoidal AP); P@k as revisitop; N-S on UKBench.",
        "",
        "## Quality",
        "",
        "| method | set | queries | mAP | P@1 | P@5 | P@10 | N-S | localised (IoU >= 0.5) | boxes on false positives |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        localised = "–" if r.get("localised_iou50") is None else f"{r['localised_iou50']:.1%} of {r['verified_relevant']}"
        lines.append(f"| {r['method']} | {r['dataset']} | {r['queries']} | {fmt(r['map'])} | {fmt(r['p@1'])} | "
                     f"{fmt(r['p@5'])} | {fmt(r['p@10'])} | {fmt(r['ns'])} | {localised} | "
                     f"{r.get('false_boxes_top10', '–')} |")
    lines += [
        "",
        "## Speed",
        "",
        "| method | set | gallery images | indexing images/s | query median s | query p95 s | index KiB/image |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['method']} | {r['dataset']} | {r['gallery_images']} | {fmt(r['index_images_per_s'], 1)} | "
                     f"{fmt(r['query_s_median'])} | {fmt(r['query_s_p95'])} | {r['index_bytes_per_image'] / 1024:.1f} |")
    ablation = HERE / "ablation.json"
    if ablation.is_file():
        lines += ["", "## Ablation of the hybrid method", "",
                  "Each row adds one technique to the row above (`python benchmarks/ablation.py`); the query time is",
                  "the median per query, the indexing time and size what the index that step reads costs per gallery image.", ""]
        for set_name, steps in json.loads(ablation.read_text()).items():
            lines += [f"### {set_name}", "",
                      "| step | mAP | gain | query median s | indexing ms/image | index KiB/image |", "|---|---|---|---|---|---|"]
            previous = None
            for label, r in steps.items():
                gain = "" if previous is None else f"{r['map'] - previous:+.3f}"
                rate = r.get("index_images_per_s")
                lines.append(f"| {label} | {r['map']:.3f} | {gain} | {r['query_s_median']:.3f} | "
                             f"{fmt(1000 / rate if rate else None, 0)} | {r['index_bytes_per_image'] / 1024:.0f} |")
                previous = r["map"]
            lines.append("")
    scale = HERE / "scale.json"
    if scale.is_file():
        lines += ["", "## At scale: real queries among simulated distractors", "",
                  "`python benchmarks/scale.py` (`spotit bench scale SET --images N`): the set's gallery plus distractors",
                  "made from its own features (`python -m pydoc spotit.evaluation.scale`) up to N photos; queries ranked to 1,000",
                  "(mAP at 1,000). KiB/photo is understated: distractors share 64 sets of local features, so a real",
                  "photo's size is the dev sets' figure above.",
                  "Latency, memory and time to the first answer are measured in a fresh search process, on the machine",
                  "above; recall@100 is the approximate vector shortlist's against exact search over the same regions.", "",
                  "| method | set | photos | vectors | queries | mAP | N-S | query median s | query p95 s | peak memory GiB | "
                  "open to first answer s | KiB/photo | shortlist recall@100 | build s | add 1,000 s | remove 1,000 s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        rows = json.loads(scale.read_text()).values()
        for r in sorted(rows, key=lambda r: (r["method"] != "hybrid", r["method"], r["dataset"], r["images"])):
            lines.append(f"| {r['method']} | {r['dataset']} | {r['images']:,} | {r['vectors']} | {r['queries']} | {fmt(r['map'])} | "
                         f"{fmt(r['ns'])} | {fmt(r['query_s_median'])} | {fmt(r['query_s_p95'])} | "
                         f"{r['rss_bytes'] / 2**30:.2f} | {fmt(r['open_s'], 1)} | "
                         f"{r['index_bytes_per_image'] / 1024:.1f} | {fmt(r.get('recall_at_100'))} | "
                         f"{fmt(r.get('build_s'), 0) if (r.get('build_s') or 0) >= 1 else 'reused'} | "
                         f"{fmt(r.get('add_1000_s'), 2)} | {fmt(r.get('remove_1000_s'), 2)} |")
    compression = HERE / "compression.json"
    if compression.is_file():
        lines += ["", "## Size and quality of the verification features", "",
                  "`python benchmarks/compression.py`: the keypoints a gallery photo keeps (largest first) and the bits of",
                  "each descriptor value, simulated on the hybrid indexes above; KiB per photo counts these features only.", "",
                  "| set | keypoints kept (mean) | descriptor bits | KiB per photo | mAP | N-S |", "|---|---|---|---|---|---|"]
        for r in json.loads(compression.read_text()):
            lines.append(f"| {r['set']} | {r['keypoints']} ({r['mean_keypoints']:.0f}) | {r['bits']} | "
                         f"{r['kib_per_photo']:.1f} | {r['map']:.4f} | {fmt(r['ns'])} |")
    serve = HERE / "serve.json"
    if serve.is_file():
        r = json.loads(serve.read_text())
        lines += ["", "## `spotit serve` under load", "",
                  f"`python benchmarks/serve.py`: {r['set']}'s boxed queries, hybrid, top 10, sent over HTTP to a `spotit serve`",
                  f"process on 127.0.0.1 ({r['photos']} photos); {r['new_photos']} photos were added to its gallery and an update",
                  "started through `POST /api/index` after 30 searches, so part of the run shares the cores with indexing.",
                  f"Measured on {r['machine']}, {r['date']}.", "",
                  "| run | searches | clients | errors | p50 s | p95 s | searches/s | update s | searches during the update |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for label, run_ in (("one client alone", r["alone"]), ("clients at once", r["busy"]),
                            ("clients at once, update started after 30", r["loaded"])):
            lines.append(f"| {label} | {run_['ok']} | {run_['clients']} | {run_['errors']} | {fmt(run_['p50_s'])} | "
                         f"{fmt(run_['p95_s'])} | {fmt(run_['throughput_per_s'], 2)} | {fmt(run_.get('update_s'), 1)} | "
                         f"{run_.get('searches_during_update', '')} |")
    cluster = HERE / "cluster.json"
    if cluster.is_file():
        r = json.loads(cluster.read_text())
        lines += ["", "## Beyond one machine: Ray and Milvus Lite on this machine", "",
                  f"`python benchmarks/cluster.py`: {r['set']} ({r['photos']} photos), measured on {r['machine']}, {r['date']}.",
                  "Indexing: each a fresh `spotit index` process; images/s as spotit reports it (extraction), wall time",
                  "of the whole command (Ray's start included). Queries: `spotit eval` with the hybrid method on the same",
                  "features, the shortlist in faiss (exact, in memory) or in a Milvus Lite file (exact, FLAT).", "",
                  "| indexing | images/s | wall s |", "|---|---|---|"]
        for label, key in (("local threads (2 workers)", "threads"), ("Ray Data, local cluster (2 workers)", "ray")):
            lines.append(f"| {label} | {r[key]['images_per_s']:.1f} | {r[key]['wall_s']:.0f} |")
        lines += ["", "| shortlist | mAP | query median s | query p95 s |", "|---|---|---|---|"]
        for label, key in (("faiss (exact)", "faiss"), ("Milvus Lite (FLAT)", "milvus_lite")):
            lines.append(f"| {label} | {r[key]['map']:.4f} | {r[key]['query_s_median']:.3f} | {fmt(r[key].get('query_s_p95'))} |")
    verdicts = HERE / "verdict.json"
    if verdicts.is_file():
        r = json.loads(verdicts.read_text())
        lines += ["", "## The verdict: does a result show the object?", "",
                  "`python benchmarks/verdict.py --write`: each query's top 100 hybrid results; a logistic model of",
                  "log(1 + verification score) and CNN similarity, with the `yes` cut-off at the lowest probability",
                  "that keeps the precision of `yes` >= 0.98 on every set, and `maybe` where yes + maybe keep 0.5.",
                  "Recall counts every relevant photo of the ground truth. \"Held out\": model and cut-offs fitted on",
                  "the other sets only, as on a user's photos.", "",
                  f"Model: {json.dumps(r['conf'])}", "",
                  "| set | queries | relevant | yes: precision | yes: recall | yes + maybe: precision | yes + maybe: recall "
                  "| held out, yes: precision | recall | held out, yes + maybe: precision | recall |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, d in r["sets"].items():
            a, h = d["fitted_on_all"], d["held_out"]
            lines.append(f"| {name} | {d['queries']} | {d['relevant']} | {fmt(a['yes_precision'])} | {fmt(a['yes_recall'])} | "
                         f"{fmt(a['yes_maybe_precision'])} | {fmt(a['yes_maybe_recall'])} | {fmt(h['yes_precision'])} | "
                         f"{fmt(h['yes_recall'])} | {fmt(h['yes_maybe_precision'])} | {fmt(h['yes_maybe_recall'])} |")
    several = HERE / "multiquery.json"
    if several.is_file():
        by_method = json.loads(several.read_text())
        first = next(iter(by_method.values()))
        lines += ["", "## Several photos of one object", "",
                  f"`python benchmarks/multiquery.py --method M`: {first['set']}, {first['objects']} objects of four views;",
                  "two views are the query and the other two the targets (and the other way round: "
                  f"{first['queries']} queries); every view is junk but the targets.", "",
                  "| method | query | mAP | targets in the top 2 (of 2) |", "|---|---|---|---|"]
        for method, r in by_method.items():
            for label, key in (("one photo (either of the two)", "one_photo"), ("the better of the two photos, chosen "
                               "after the fact", "better_photo_of_two"), ("both photos, searched together", "two_photos")):
                lines.append(f"| {method} | {label} | {r[key]['map']:.4f} | {r[key]['targets_in_top2']:.3f} |")
    notes = HERE / "NOTES.md"
    if notes.is_file():
        lines += ["", notes.read_text().strip()]
    RESULTS_MD.write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="*", help="only these sets")
    parser.add_argument("--methods", nargs="*", default=METHODS, help="methods to run (default: all)")
    args = parser.parse_args()
    results = json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.is_file() else {}
    for name, root in available_sets(args.sets).items():
        for method in args.methods:
            if (method, name) in SKIP:
                continue
            extra = ["--index", str(BENCH_DIR / "indexes" / f"{name}-{method}")]
            if method == "sift" and name in SIFT_QUERIES:
                extra += ["--max-queries", str(SIFT_QUERIES[name])]
            out = run(["eval", str(root), "--method", method, "--json", "--quiet", *extra])
            results[f"{method}/{name}"] = json.loads(out.strip().splitlines()[-1])
            RESULTS_JSON.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
            write_markdown(results)
    write_markdown(results)
    print(f"wrote {RESULTS_MD}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
