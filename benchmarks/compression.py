"""Size against quality of compressed local features for verification (issue: a million photos).

    python benchmarks/compression.py                       # every dev set found, every setting
    python benchmarks/compression.py --sets holidays-dev --max-queries 40

Simulates storage formats on the hybrid indexes that benchmarks/run.py builds (no re-extraction): each
gallery photo's verification features, as read for the shortlist, keep only their `keypoints` largest
keypoints (scale: the most repeatable), their geometry as float16, and their descriptors either as they
are (8 bits a value) or square-root quantised to 4 bits (RootSIFT compares square roots: 0..15 squared
back). The queries' own features are untouched, as they are never stored. Prints a Markdown table of
bytes per photo (features as stored) and mAP per set, and writes benchmarks/compression.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import BENCH_DIR, available_sets  # noqa: E402

from spotit import Index  # noqa: E402
from spotit.evaluation.datasets import load_dataset  # noqa: E402
from spotit.evaluation.evaluate import run_queries  # noqa: E402
from spotit.features.local_features import LocalFeatures, expand  # noqa: E402
from spotit.search.snapshot import Snapshot  # noqa: E402

SETTINGS = [(None, 8), (None, 4), (500, 8), (500, 4), (300, 4), (200, 4)]  # (keypoints kept, descriptor bits)


def compress(features: LocalFeatures, keep: int | None, bits: int) -> LocalFeatures:
    features = expand(features)  # as read for verification: 8-bit values
    order = np.argsort(-features.keypoints[:, 2], kind="stable")[:keep]
    keypoints = features.keypoints[order].astype(np.float16).astype(np.float32)
    descriptors = features.descriptors[order]
    if bits == 4:
        descriptors = (np.clip(np.round(np.sqrt(descriptors.astype(np.float32))), 0, 15) ** 2).astype(np.uint8)
    return LocalFeatures(keypoints, descriptors)


def bytes_per_photo(count: float, bits: int) -> float:
    return count * (8 + 128 * bits / 8) + 8  # float16 x, y, size, angle; descriptor; an offset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="*", default=["holidays-dev", "clutter-hard-dev", "ukbench-dev"])
    parser.add_argument("--max-queries", type=int, default=None)
    args = parser.parse_args()
    real_reader = Snapshot.reader
    rows = []
    for name, root in available_sets(args.sets).items():
        index = Index.open(BENCH_DIR / "indexes" / f"{name}-hybrid")
        dataset = load_dataset(root)
        names = index.snapshot().names
        reader = index.snapshot().reader("verify")
        counts = [len(reader(n, i)) for i, n in enumerate(names)]
        stored_bits = index.manifest["feature_settings"]["verify"].get("stored_bits", 8)
        for keep, bits in [(k, b) for k, b in SETTINGS if b <= stored_bits]:
            def reader_of(snap, kind, keep=keep, bits=bits):
                read = real_reader(snap, kind)
                return lambda image, position=None: compress(read(image, position), keep, bits)

            Snapshot.reader = reader_of
            index._snapshot = None  # a fresh snapshot: its reader is the compressing one
            result = run_queries(dataset, index, "hybrid", args.max_queries, progress=False)
            Snapshot.reader = real_reader
            kept = float(np.mean([min(c, keep or c) for c in counts]))
            rows.append({"set": name, "keypoints": keep or "all", "bits": bits, "mean_keypoints": kept,
                         "kib_per_photo": bytes_per_photo(kept, bits) / 1024, "map": result["map"], "ns": result["ns"]})
            print(json.dumps(rows[-1]), flush=True)
    (HERE / "compression.json").write_text(json.dumps(rows, indent=1))
    print("| set | keypoints kept | descriptor bits | KiB per photo | mAP | N-S |\n|---|---|---|---|---|---|")
    for r in rows:
        ns = f"{r['ns']:.3f}" if r["ns"] is not None else "-"
        print(f"| {r['set']} | {r['keypoints']} ({r['mean_keypoints']:.0f}) | {r['bits']} | {r['kib_per_photo']:.1f} | {r['map']:.4f} | {ns} |")


if __name__ == "__main__":
    main()
