"""Several query photos of one object against one: on ukbench-dev, whose objects have four views each.

For every object, two of its views are the query and the other two are what must be found; then the other
way round. Each pair is searched as one query (spotit search a.jpg b.jpg) and each view alone; all four
views are junk to every ranking but the two targets. Reports mAP, and how many targets are in the top 2.

    python benchmarks/multiquery.py [--set ukbench-dev] [--method hybrid] [--max-objects N]

Results are kept per method in multiquery.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (the benchmarks' shared set list and index folders)

from spotit import Index  # noqa: E402
from spotit.evaluation.datasets import load_dataset  # noqa: E402
from spotit.evaluation.metrics import positive_ranks, query_metrics  # noqa: E402

HERE = Path(__file__).resolve().parent


def groups(dataset) -> list[list]:
    """Each object's four views (Query objects), in file order."""
    by_object: dict[frozenset, list] = {}
    for query in dataset.queries:
        positives, junk = query.protocols["default"]
        by_object.setdefault(frozenset([*positives, *junk]), []).append(query)
    return [sorted(views, key=lambda q: q.path.name) for views in by_object.values() if len(views) == 4]


def measure(ranking: list[str], targets: list[str], junk: list[str]) -> tuple[float, int]:
    ap = query_metrics(ranking, targets, junk, (1,))["ap"]
    return ap, int((positive_ranks(ranking, targets, junk) < 2).sum())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", default="ukbench-dev")
    parser.add_argument("--method", default="hybrid", choices=["hybrid", "regional"])
    parser.add_argument("--max-objects", type=int)
    args = parser.parse_args()
    found = run.available_sets([args.set])
    if not found:
        print(f"{args.set} is absent: nothing measured")
        return 0
    dataset = load_dataset(found[args.set])
    index = Index.open_or_create(run.BENCH_DIR / "indexes" / f"{args.set}-hybrid", dataset.gallery, ["hybrid"])
    index.update(progress=False)
    objects = groups(dataset)[: args.max_objects]
    ids = {q.path.name: q.path.stem for views in objects for q in views}
    rank = lambda query: [hit.id for hit in index.search(query, top=20, method=args.method)]  # noqa: E731
    alone = {q.path.name: rank(q.path) for views in tqdm(objects, desc="one photo", unit="object") for q in views}
    rows = []
    for views in tqdm(objects, desc="two photos", unit="object"):
        junk = [ids[q.path.name] for q in views]
        for pair, rest in ((views[:2], views[2:]), (views[2:], views[:2])):
            targets = [ids[q.path.name] for q in rest]
            together = measure(rank([q.path for q in pair]), targets, junk)
            single = [measure(alone[q.path.name], targets, junk) for q in pair]
            rows.append((*together, *single[0], *single[1]))
    data = np.array(rows, np.float64)
    result = {
        "set": args.set, "method": args.method, "objects": len(objects), "queries": len(rows),
        "two_photos": {"map": data[:, 0].mean(), "targets_in_top2": data[:, 1].mean()},
        "one_photo": {"map": data[:, [2, 4]].mean(), "targets_in_top2": data[:, [3, 5]].mean()},
        "better_photo_of_two": {"map": np.maximum(data[:, 2], data[:, 4]).mean(),
                                "targets_in_top2": np.maximum(data[:, 3], data[:, 5]).mean()},
    }
    path = HERE / "multiquery.json"
    kept = json.loads(path.read_text()) if path.is_file() else {}
    kept = kept if "set" not in kept else {kept.get("method", "hybrid"): kept}  # one method, as first written
    path.write_text(json.dumps({**kept, args.method: result}, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
