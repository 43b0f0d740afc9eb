"""The `spotit` command line: a thin layer over `spotit.Index` and friends."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from . import __version__, backbones
from .errors import SpotitError
from .images import IMAGE_EXTENSIONS, as_image, parse_box, read_box_file
from .index import DEFAULT_METHOD, METHODS, Index, default_index_dir, parse_methods
from .ranking import ranklist_line, write_ranklist


def eprint(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def add_index_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", type=Path, default=None,
                        help=f"index folder (default: $SPOTIT_INDEX or {default_index_dir()})")


# ---- spotit index ----------------------------------------------------------------------------------
def cmd_index(args) -> int:
    index = Index.open_or_create(args.index, args.gallery, parse_methods(args.method), args.backbone,
                                 args.weights, rebuild=args.rebuild)
    try:
        report = index.update(progress=not args.quiet)
    except KeyboardInterrupt:
        eprint(f"interrupted: {len(index)} images are saved in {index.store.root}; run the same command to resume")
        return 130
    print(f"index {index.store.root}: {len(index)} images ({', '.join(index.methods)}; backbone {index.manifest['backbone']})")
    print(f"  {report.added} added, {report.updated} re-extracted, {report.removed} removed, {report.unchanged} unchanged")
    if report.processed:
        print(f"  {report.images_per_s:.1f} images/s")
    if report.skipped:
        print(f"  skipped {len(report.skipped)} unreadable file(s):")
        for name, reason in report.skipped:
            print(f"    {name}: {reason}")
    return 0


# ---- spotit search ---------------------------------------------------------------------------------
def find_queries(query_dir: Path) -> list[Path]:
    if not query_dir.is_dir():
        raise SpotitError(f"query folder not found: {query_dir}")
    queries = sorted(p for p in query_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not queries:
        raise SpotitError(f"no query images in {query_dir}")
    return queries


def print_top(title: str, results, top: int = 10) -> None:
    print(title)
    for rank, hit in enumerate(results[:top], 1):
        print(f"  {rank:>3}. {hit.id}  {hit.score:.4f}")


def cmd_search(args) -> int:
    if args.queries is not None:
        return search_batch(args)
    if args.query is None:
        raise SpotitError("give a QUERY_IMAGE, or --queries QUERY_DIR --boxes BOX_DIR for batch mode")
    boxes = [parse_box(text) for text in args.box or []]
    index = Index.open(args.index, args.weights)
    image = as_image(args.query)
    args.method = args.method or index.default_method
    results = index.search(image, boxes, method=args.method, top=args.top, progress=not args.quiet)
    if args.grid:
        from .grid import save_grid

        save_grid(args.grid, image, boxes, results)
    if args.json:
        print(json.dumps({"query": str(args.query), "boxes": boxes, "method": args.method,
                          "results": [r.to_dict() for r in results]}))
    else:
        print_top(f"{args.query} ({args.method}):", results, args.top)
        if args.grid:
            print(f"grid written to {args.grid}")
    return 0


def search_batch(args) -> int:
    """The assignment's layout: QUERY_DIR/NAME.jpg with BOX_DIR/NAME.txt; ranks the whole gallery."""
    index = Index.open(args.index, args.weights)
    args.method = args.method or index.default_method
    queries = find_queries(args.queries)
    lines, failed, report = [], [], []
    for path in queries:
        try:
            boxes = []
            if args.boxes is not None:
                box_file = args.boxes / f"{path.stem}.txt"
                if box_file.is_file():
                    boxes = read_box_file(box_file)
                else:
                    eprint(f"{path.name}: no {box_file}, searching the whole image")
            image = as_image(path)
            results = index.search(image, boxes, method=args.method, top=None)
        except SpotitError as exc:
            failed.append(f"{path.name}: {exc}")
            eprint(f"skipped query {exc}" if str(exc).startswith(str(path)) else f"skipped query {path.name}: {exc}")
            continue
        lines.append(ranklist_line(path.stem, [r.id for r in results]))
        if args.grid:
            from .grid import save_grid

            save_grid(Path(args.grid) / f"{path.stem}.png", image, boxes, results)
        if args.json:
            report.append({"query": path.name, "boxes": boxes, "results": [r.to_dict() for r in results[: args.top]]})
        else:
            print_top(f"Q{path.stem} ({args.method}):", results, min(args.top or 10, 10))
    ranklist = args.ranklist or Path("ranklist.txt")
    write_ranklist(ranklist, lines)
    if args.json:
        print(json.dumps({"method": args.method, "ranklist": str(ranklist), "queries": report, "failed": failed}))
    else:
        print(f"rank list of {len(lines)} queries x {len(index)} gallery images written to {ranklist}")
        if args.grid:
            print(f"grids written to {args.grid}/")
    if failed:
        eprint(f"{len(failed)} query(ies) failed:")
        for line in failed:
            eprint(f"  {line}")
        return 1
    return 0


# ---- spotit demo -----------------------------------------------------------------------------------
def cmd_demo(args) -> int:
    from .demo import make_demo
    from .grid import save_grid

    made = make_demo(args.out, seed=args.seed)
    print(f"demo gallery: {made['gallery']} ({sum(1 for _ in made['gallery'].iterdir())} photos)")
    index = Index.open_or_create(args.out / "index", made["gallery"], [args.method], rebuild=True)
    report = index.update(progress=not args.quiet)
    print(f"indexed {report.processed} images, {report.images_per_s:.1f} images/s")
    image = as_image(made["query"])
    boxes = [made["box"]]
    results = index.search(image, boxes, method=args.method, top=10)
    print_top(f"query {made['query']} with box {','.join(map(str, made['box']))} ({args.method}):", results)
    found = sum(hit.id in made["relevant"] for hit in results[: len(made["relevant"])])
    print(f"{found} of the {len(made['relevant'])} photos with the pasted cup are in the top {len(made['relevant'])}")
    grid = save_grid(args.out / "demo-grid.png", image, boxes, results)
    print(f"grid written to {grid}")
    return 0


# ---- spotit eval / bench ---------------------------------------------------------------------------
def cmd_eval(args) -> int:
    from .evaluate import evaluate, format_result

    result = evaluate(args.dataset, args.method, args.index, args.backbone, args.max_queries, progress=not args.quiet)
    print(format_result(result))
    if args.json:
        print(json.dumps(result))
    return 0


def cmd_make_clutter(args) -> int:
    from .clutter import ClutterConfig, make_clutter

    config = ClutterConfig(objects=args.objects, distractor_scenes=args.distractor_scenes,
                           distractor_objects=args.distractor_objects, seed=args.seed)
    made = make_clutter(args.objects_set, args.scenes, args.out, config, progress=not args.quiet)
    print(f"wrote {made['queries']} boxed queries and {made['gallery']} gallery images to {made['out']}")
    return 0


# ---- parser ----------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spotit", description="Find the gallery photos that show the same object as a query.")
    parser.add_argument("--version", action="version", version=f"spotit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("index", help="extract and store the features of every image in a gallery folder")
    p.add_argument("gallery", type=Path, help="folder of photos (searched recursively)")
    add_index_arg(p)
    p.add_argument("--method", default=DEFAULT_METHOD, choices=[*METHODS, "all"],
                   help=f"search methods the index serves (default: {DEFAULT_METHOD}); all: every method")
    p.add_argument("--backbone", default=backbones.DEFAULT_BACKBONE, choices=list(backbones.confs), help="CNN backbone")
    p.add_argument("--weights", type=Path, help="weights file for the backbone (resnet18: torchvision's resnet18-f37072fd.pth)")
    p.add_argument("--rebuild", action="store_true", help="delete the index and build it anew")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="rank the gallery for a query image (or a folder of boxed queries)")
    p.add_argument("query", nargs="?", type=Path, help="query image")
    p.add_argument("--box", action="append", metavar="X,Y,W,H",
                   help="crop the query to this box (pixels, top-left origin); repeat for several instances")
    add_index_arg(p)
    p.add_argument("--method", choices=list(METHODS),
                   help=f"ranking method (default: {DEFAULT_METHOD} if the index serves it)")
    p.add_argument("--top", type=int, default=10, help="results to show (default: 10)")
    p.add_argument("--json", action="store_true", help="print results as JSON")
    p.add_argument("--grid", type=Path, help="write a PNG of the query and its 10 best results (a folder in batch mode)")
    p.add_argument("--queries", type=Path, help="batch mode: folder of query images")
    p.add_argument("--boxes", type=Path, help="batch mode: folder of NAME.txt box files, one 'x y w h' line per box")
    p.add_argument("--ranklist", type=Path, help="batch mode: rank list to write (default: ranklist.txt)")
    p.add_argument("--weights", type=Path, help="backbone weights, if the index was built with --weights")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("demo", help="build a demo gallery from real photos, index it and search it")
    p.add_argument("--out", type=Path, default=Path("spotit-demo"), help="folder for the demo (default: ./spotit-demo)")
    p.add_argument("--method", default=DEFAULT_METHOD, choices=list(METHODS), help=f"ranking method (default: {DEFAULT_METHOD})")
    p.add_argument("--seed", type=int, default=0, help="random seed of the demo gallery")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("eval", help="measure quality and speed on a benchmark set")
    p.add_argument("dataset", type=Path, help="benchmark folder (images/+groundtruth.json, assignment layout, or revisited Oxford/Paris)")
    p.add_argument("--method", default=DEFAULT_METHOD, choices=list(METHODS), help=f"ranking method (default: {DEFAULT_METHOD})")
    p.add_argument("--index", type=Path, default=None, help="index folder (default: one per dataset in the cache folder)")
    p.add_argument("--backbone", default=backbones.DEFAULT_BACKBONE, choices=list(backbones.confs), help="CNN backbone")
    p.add_argument("--max-queries", type=int, default=None, help="evaluate at most N queries, evenly spread (slow methods)")
    p.add_argument("--json", action="store_true", help="end with one line of JSON holding every figure")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("bench", help="benchmark tools")
    bench = p.add_subparsers(dest="bench_command", required=True)
    p = bench.add_parser("make-clutter", help="paste object views into scene photos: a boxed-query benchmark")
    p.add_argument("objects_set", metavar="OBJECTS", type=Path, help="set with images/ + groundtruth.json grouping views of objects")
    p.add_argument("scenes", metavar="SCENES", type=Path, help="folder (or set) of scene photos")
    p.add_argument("out", metavar="OUT", type=Path, help="new folder for the benchmark")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--objects", type=int, default=60, help="objects with a boxed query (default: 60)")
    p.add_argument("--distractor-scenes", type=int, default=300, help="gallery scenes without an object (default: 300)")
    p.add_argument("--distractor-objects", type=int, default=60, help="other objects pasted as distractors (default: 60)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_make_clutter)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "top", 1) is not None and getattr(args, "top", 1) < 1:
        eprint("spotit: error: --top must be at least 1")
        return 2
    started = time.perf_counter()
    try:
        code = args.func(args)
    except SpotitError as exc:
        eprint(f"spotit: error: {exc}")
        return 2
    except KeyboardInterrupt:
        eprint("spotit: interrupted")
        return 130
    eprint(f"{args.command} took {time.perf_counter() - started:.1f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
