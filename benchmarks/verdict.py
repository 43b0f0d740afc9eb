"""Calibrate the verdict (spotit/search/verdict.py) on the dev sets and measure it: precision and recall of `yes`
and of `yes + maybe` per set, fitted on all sets and, to show how it holds on a set it never saw, fitted
on the other sets only (leave one set out).

    python benchmarks/verdict.py [--sets ...] [--write]

Every query's top 100 hybrid results (the verified shortlist, where any `yes` can come from) are the
candidates; recall counts every relevant photo of the ground truth, also those never shortlisted.
`--write` stores the model fitted on all sets in spotit/search/verdict.py's confs. Figures go to verdict.json
and RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (the benchmarks' shared set list and index folders)

from spotit import Index  # noqa: E402
from spotit.evaluation.datasets import load_dataset  # noqa: E402
from spotit.search import verdict  # noqa: E402

HERE = Path(__file__).resolve().parent
SETS = ["holidays-dev", "ukbench-dev", "clutter-hard-dev", "clutter-dev", "clutter-hard-2"]
YES_PRECISION, MAYBE_PRECISION = 0.98, 0.5  # maybe: worth a look, more often right than not
CANDIDATES = 100


def collect(name: str, root: Path, again: bool = False) -> dict:
    """Per candidate: evidence, similarity, relevant, query number; and each query's count of relevant photos.
    Kept in $SPOTIT_BENCH_DIR/verdict/NAME.npz, from which a refit takes seconds (`again`: search anew)."""
    cache = run.BENCH_DIR / "verdict" / f"{name}.npz"
    if cache.is_file() and not again:
        with np.load(cache) as saved:
            return {key: saved[key] for key in saved.files} | {"relevant_total": int(saved["relevant_total"])}
    dataset = load_dataset(root)
    index = Index.open_or_create(run.BENCH_DIR / "indexes" / f"{name}-hybrid", dataset.gallery, ["hybrid"])
    index.update(progress=False)
    rows, relevant_total = [], 0
    for q, query in enumerate(tqdm(dataset.queries, desc=name, unit="query")):
        positives, junk = query.protocols["default"]
        positives, junk = set(positives), set(junk)
        relevant_total += len(positives)
        for hit in index.search(query.path, query.boxes, top=CANDIDATES + len(junk)):
            if hit.id not in junk:
                rows.append((hit.evidence, hit.similarity, hit.id in positives, q))
    data = np.array(rows, np.float64)
    collected = {"evidence": data[:, 0], "similarity": data[:, 1], "relevant": data[:, 2], "query": data[:, 3],
                 "relevant_total": relevant_total}
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **collected)
    return collected


def figures(p: np.ndarray, data: dict, conf: dict) -> dict:
    out = {}
    for label, cut in (("yes", conf["yes"]), ("yes_maybe", conf["maybe"])):
        chosen = p >= cut
        hits = float(data["relevant"][chosen].sum())
        out[f"{label}_precision"] = hits / chosen.sum() if chosen.any() else None
        out[f"{label}_recall"] = hits / data["relevant_total"]
        out[f"{label}_count"] = int(chosen.sum())
    return out


def calibrate(sets: dict[str, dict]) -> dict:
    """The model and cut-offs fitted on `sets`: `yes` reaches the precision on every one of them."""
    x = np.vstack([verdict.features(d["evidence"], d["similarity"]) for d in sets.values()])
    labels = np.concatenate([d["relevant"] for d in sets.values()])
    weights, bias = verdict.fit(x, labels)
    conf = {"weights": [round(float(w), 6) for w in weights], "bias": round(bias, 6)}
    scored = [(verdict.probability(d["evidence"], d["similarity"], conf), d["relevant"]) for d in sets.values()]
    # rounded up: the stored cut-off must not let in a result the exact one keeps out
    conf["yes"] = float(np.ceil(verdict.cut_off(scored, YES_PRECISION) * 1e6) / 1e6)
    conf["maybe"] = min(float(np.ceil(verdict.cut_off(scored, MAYBE_PRECISION) * 1e6) / 1e6), conf["yes"])
    return conf


def write_conf(conf: dict) -> None:
    path = HERE.parent / "src" / "spotit" / "search" / "verdict.py"
    text = path.read_text()
    line = f'    "default": {json.dumps(conf)},'
    path.write_text(re.sub(r'^    "default": \{.*\},$', line.replace("\\", "\\\\"), text, count=1, flags=re.M))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=SETS)
    parser.add_argument("--write", action="store_true", help="store the model fitted on all sets in spotit/search/verdict.py")
    parser.add_argument("--again", action="store_true", help="search the sets anew, not from the saved candidates")
    args = parser.parse_args()
    found = run.available_sets(args.sets)
    if not found:
        print("no dev sets found: ../shared/datasets is absent")
        return 0
    data = {name: collect(name, root, args.again) for name, root in found.items()}
    conf = calibrate(data)
    result = {"conf": conf, "sets": {}}
    for name, d in data.items():
        held_out = calibrate({k: v for k, v in data.items() if k != name}) if len(data) > 1 else conf
        result["sets"][name] = {
            "queries": int(d["query"].max()) + 1, "relevant": d["relevant_total"],
            "fitted_on_all": figures(verdict.probability(d["evidence"], d["similarity"], conf), d, conf),
            "held_out": figures(verdict.probability(d["evidence"], d["similarity"], held_out), d, held_out),
        }
    (HERE / "verdict.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    if args.write:
        write_conf(conf)
        print(f"written to spotit/search/verdict.py: {conf}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
