"""`spotit bench scale` at several sizes -> benchmarks/scale.json and the "At scale" table of RESULTS.md.

    python benchmarks/scale.py                                   # holidays-dev at 5k to 1M photos, hybrid and cnn
    python benchmarks/scale.py --sets clutter-hard-dev --images 100000 --vectors exact ivfpq --recall

Each run builds (or reuses, from the cache) a scale index of the set: its gallery plus simulated
distractors (see `python -m pydoc spotit.evaluation.scale`); the largest sizes need disk: about 30 KB per photo.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import RESULTS_JSON, SHARED, run, write_markdown  # noqa: E402

SCALE_JSON = HERE / "scale.json"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="*", default=["holidays-dev"])
    parser.add_argument("--images", nargs="*", type=int, default=[5_000, 20_000, 100_000, 1_000_000])
    parser.add_argument("--methods", nargs="*", default=["hybrid", "cnn"])
    parser.add_argument("--vectors", nargs="*", default=["auto"])
    parser.add_argument("--max-queries", type=int)
    parser.add_argument("--recall", action="store_true", help="also measure the shortlist's recall against exact search")
    args = parser.parse_args()
    results = json.loads(SCALE_JSON.read_text()) if SCALE_JSON.is_file() else {}
    extra = (["--max-queries", str(args.max_queries)] if args.max_queries else []) + (["--recall"] if args.recall else [])
    for name in args.sets:
        for method in args.methods:
            for images in args.images:
                for vectors in args.vectors:
                    out = run(["bench", "scale", str(SHARED / name), "--images", str(images), "--vectors", vectors,
                               "--method", method, "--json", "--quiet", *extra])
                    result = json.loads(out.strip().splitlines()[-1])
                    results[f"{name}/{method}/{images}/{result['vectors']}"] = result
                    SCALE_JSON.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    write_markdown(json.loads(RESULTS_JSON.read_text()))
    print(f"wrote {SCALE_JSON}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
