"""Ablation of the hybrid method: add one technique at a time and measure quality, query time and bytes.

    python benchmarks/ablation.py                        # every dev set, every step
    python benchmarks/ablation.py --sets holidays-dev --steps 8 9 10 11

Each step is a named configuration in spotit (region descriptors in global_features.regional_confs,
search settings in rerank.confs), evaluated with spotit.evaluation.evaluate; indexes live under
$SPOTIT_BENCH_DIR/ablation. Results go to benchmarks/ablation.json and the ablation table of RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from run import BENCH_DIR, HERE, SHARED, write_markdown  # noqa: E402  (benchmarks/ is the script's folder)

from spotit.evaluation.evaluate import evaluate
from spotit.index import Index

ABLATION_JSON = HERE / "ablation.json"
SETS = {"clutter-dev": BENCH_DIR / "clutter-dev", "clutter-hard-dev": SHARED / "clutter-hard-dev",
        "holidays-dev": SHARED / "holidays-dev", "ukbench-dev": SHARED / "ukbench-dev"}

# (row label, search method, region configuration, search configuration), cumulative
STEPS = [
    ("seed: avgpool 224 centre crop", "cnn", None, "default"),
    ("+ GeM pooling, whole image at 224 px", "regional", "gem-224", "upright"),
    ("+ input 672 px, query crop at its photo's scale", "regional", "gem-672", "upright"),
    ("+ regions (R-MAC grid, 3 levels, 14 per image)", "regional", "gem-672-regions", "upright"),
    ("+ PCA-whitening from the gallery (512 d, power 0.25)", "regional", "gem-regions", "upright"),
    ("+ verification: RootSIFT, MAGSAC, top 100 re-ranked", "hybrid", "gem-regions", "upright"),
    ("+ rotation: turned queries add 10 to the shortlist", "hybrid", "gem-regions", "no-qe"),
    ("+ query expansion from 2 verified results (spotit 0.1)", "hybrid", "gem-regions", "v0.1"),
    ("+ sound shapes only: convex, <= 4:1 stretch, >= 24 px, inside the photo", "hybrid", "gem-regions", "shape"),
    ("+ inliers near the box border count 1/4", "hybrid", "gem-regions", "centre"),
    ("+ boxed query seen at 2 scales x 4 turns, best view scores", "hybrid", "gem-regions", "views"),
    ("+ query expansion from every verified result", "hybrid", "gem-regions", "expansion"),
    ("+ a boxed object's weak fits confirmed on the photo", "hybrid", "gem-regions", "confirmed"),
    ("+ a whole photo like many others scores lower", "hybrid", "gem-regions", "hubness"),
    ("+ a box's fit needs an inlier in its centre", "hybrid", "gem-regions", "inlier-in-centre"),
    ("+ a whole photo's unverified matches count a little (default)", "hybrid", "gem-regions", "default"),
]


def run_step(set_name: str, root: Path, method: str, regions: str | None, search: str) -> dict:
    """One step; steps with the same region configuration share an index."""
    folder = BENCH_DIR / "ablation" / f"{set_name}-{regions or 'seed'}"
    gallery = root / ("gallery" if (root / "gallery").is_dir() else "images")
    methods = ["hybrid", "regional"] if regions == "gem-regions" else [method]
    index = Index.open_or_create(folder, gallery, methods, confs={"regions": regions} if regions else None)
    index.search_conf = search
    return evaluate(root, method, index=index, progress=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="*", default=list(SETS))
    parser.add_argument("--steps", nargs="*", type=int, default=None, help="row numbers (0-based) to run; default all")
    args = parser.parse_args()
    rows = json.loads(ABLATION_JSON.read_text()) if ABLATION_JSON.is_file() else {}
    for set_name in args.sets:
        root = SETS[set_name]
        if not root.is_dir():
            print(f"skipping {set_name}: {root} is absent")
            continue
        for number, (label, method, regions, search) in enumerate(STEPS):
            if args.steps is not None and number not in args.steps:
                continue
            print(f"{set_name}: {label}", flush=True)
            result = run_step(set_name, root, method, regions, search)
            rows.setdefault(set_name, {})[label] = result
            order = {step[0]: n for n, step in enumerate(STEPS)}  # rows in step order, whatever ran when
            rows[set_name] = dict(sorted(rows[set_name].items(), key=lambda item: order.get(item[0], -1)))
            ABLATION_JSON.write_text(json.dumps(rows, indent=1) + "\n")
    results = json.loads((HERE / "results.json").read_text()) if (HERE / "results.json").is_file() else {}
    write_markdown(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
