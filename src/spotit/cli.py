"""The `spotit` command line: a thin layer over `spotit.Index` and friends."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from . import __version__, vectors
from .cluster.milvus import TOKEN_ENV as MILVUS_TOKEN_ENV
from .errors import SpotitError
from .features import backbones
from .fileio import check_output_dir, check_output_file
from .images import (
    DEFAULT_EXCLUDES,
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    as_image,
    assign_ids,
    file_problem,
    parse_box,
    read_box_file,
)
from .index import DEFAULT_METHOD, METHODS, Index, default_index_dir, parse_methods, query_photos
from .indexing.watch import SETTLE_S
from .search.ranking import format_name, ranklist_line, write_ranklist
from .search.scope import Scope
from .storage.store import describe


class Output:
    """stdout that survives a closed pipe (`spotit ... | head`): printing stops, the work and its files go on."""

    closed = False

    @classmethod
    def print(cls, *args) -> None:
        if cls.closed:
            return
        try:
            print(*args, flush=True)
        except BrokenPipeError:
            cls.closed = True
            # later writes, and Python's own flush at exit, must not raise again
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)


say = Output.print


def eprint(*args) -> None:
    try:
        print(*args, file=sys.stderr, flush=True)
    except BrokenPipeError:
        pass


def add_index_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", type=Path, default=None,
                        help="index folder (default: $SPOTIT_INDEX, else $XDG_DATA_HOME/spotit/index, else "
                             "~/.local/share/spotit/index)")


def add_watch_args(p, what: str) -> None:
    p.add_argument("--watch", action="store_true", help=what)
    p.add_argument("--watch-poll", type=number_type(float, "a number of seconds", 0.1), metavar="SECONDS",
                   help="with --watch: look for changes every SECONDS instead of using file events (the default on "
                        "network file systems, whose events miss other machines' changes: every 10 s)")
    p.add_argument("--watch-settle", type=number_type(float, "a number of seconds", 0), metavar="SECONDS",
                   help=f"with --watch: wait until no change came for SECONDS before updating (default: {SETTLE_S:g})")


def add_max_pixels_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS, metavar="N",
                        help=f"refuse images larger than N pixels before decoding them (default: {DEFAULT_MAX_PIXELS:,})")


def number_type(parse, what: str, low, high=None):
    """An argparse type: a value read by `parse`, at least `low` and at most `high` (None: no upper bound)."""
    def check(text: str):
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text} must be " + (f"at least {low}" if high is None else f"between {low} and {high}"))
        return value
    return check


fraction = number_type(float, "a number", 0, 1)
positive_int = number_type(lambda text: int(text.replace("_", "").replace(",", "")), "a whole number", 1)
port_number = number_type(int, "a port number", 0, 65535)


def count_images(count: int) -> str:
    return f"{count} image" + ("" if count == 1 else "s")


# ---- spotit index ----------------------------------------------------------------------------------
def cmd_index(args) -> int:
    index_dir = check_output_dir(args.index or default_index_dir(), "index folder")
    if args.milvus_token:
        os.environ[MILVUS_TOKEN_ENV] = args.milvus_token
    check_watch_args(args)
    if args.no_exclude and args.exclude:
        raise SpotitError("give either --exclude or --no-exclude, not both")
    if args.ray not in (None, "local"):  # a named cluster that cannot serve is said before any work
        from .cluster import require
        from .cluster.ray_extract import check_reachable

        require("ray", f"--ray {args.ray}")
        require("ray.data", f"--ray {args.ray}")
        check_reachable(args.ray)
    index = Index.open_or_create(index_dir, args.gallery, parse_methods(args.method), args.backbone, args.weights,
                                 rebuild=args.rebuild, moved=args.moved, wait=args.wait, vectors=args.vectors,
                                 catalogue=args.catalogue, exclude=[] if args.no_exclude else args.exclude)
    try:
        report = index.update(progress=not args.quiet, wait=args.wait, max_pixels=args.max_pixels, ray=args.ray)
    except KeyboardInterrupt:
        saved = len(Index.open(index.store.root))
        eprint(f"interrupted: {count_images(saved)} saved in {index.store.root}; run the same command to resume")
        return 130
    where = f"; {shortlist_place(index.store.learned)}" if "regional" in index.methods and len(index) else ""
    if describe(index.store.catalogue) != "sqlite":
        where += f"; catalogue in {index.store.catalogue}"
    say(f"index {index.store.root}: {count_images(len(index))} ({', '.join(index.methods)}; backbone {index.manifest['backbone']}{where})")
    say(f"  {report.added} added, {report.updated} re-extracted, {report.removed} removed, {report.unchanged} unchanged")
    if report.processed:
        say(f"  {report.images_per_s:.1f} images/s")
    for note in report.notes:
        say(f"  note: {note}")
    if report.left_out:
        say("  left out: " + ", ".join(f"{count} {what}" for what, count in sorted(report.left_out.items())))
    if report.skipped:
        say(f"  skipped {len(report.skipped)} file(s):")
        for name, reason in sorted(report.skipped):
            say(f"    {format_name(name)}: {reason}")
    return watch_gallery(index, args) if args.watch else 0


def watch_gallery(index: Index, args) -> int:
    """`spotit index --watch`: update after each settled burst of changes, until Ctrl-C or SIGTERM."""
    from .indexing.watch import Watcher

    def update() -> None:
        report = index.update(progress=False, wait=True, max_pixels=args.max_pixels)
        if report.added or report.updated or report.removed or report.skipped:
            say(f"{time.strftime('%H:%M:%S')}  {report.added} added, {report.updated} re-extracted, {report.removed} "
                f"removed{f', {len(report.skipped)} skipped' if report.skipped else ''}; {count_images(len(index))}")

    watcher = Watcher(index.gallery, update, args.watch_settle, args.watch_poll,
                      on_error=lambda exc: eprint(f"update failed, retried at the next change: {exc}"))
    how = f"polling every {watcher.poll:g} s" if watcher.polling else "file events"
    say(f"watching {index.gallery} ({how}); Ctrl-C stops")
    try:
        watcher.run()
    except KeyboardInterrupt:
        say("stopped watching")
    return 0


def shortlist_place(learned: dict | None) -> str:
    """Where the region shortlist is searched, as the index summary says it."""
    if not learned:
        return "region shortlist in memory"
    if learned["vectors"] == "milvus":
        from .cluster import public

        return f"region shortlist in Milvus at {public(learned['uri'])}"
    return f"region shortlist in faiss ({learned['vectors']})"


# ---- spotit search ---------------------------------------------------------------------------------
def find_queries(query_dir: Path) -> list[tuple[str, Path]]:
    """(query name, path) of the images in QUERY_DIR; names are unique (1.jpg and 1.png keep extensions)."""
    if not query_dir.is_dir():
        raise SpotitError(f"query folder not found: {query_dir}")
    queries = []
    for path in sorted(query_dir.iterdir()):
        if path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith("."):
            problem = file_problem(path)
            if problem:
                eprint(f"skipped query {path.name}: {problem}")
            else:
                queries.append(path)
    if not queries:
        raise SpotitError(f"no query images in {query_dir}")
    return list(zip(assign_ids([p.name for p in queries]), queries))


STALE_NOTE = {"deleted": "  (deleted since indexing)", "changed": "  (changed since indexing)"}


def print_top(title: str, results, top: int = 10) -> None:
    say(title)
    for rank, hit in enumerate(results[:top], 1):
        verdict = f"  {hit.match:<5} {hit.confidence:.2f}" if hit.match is not None else ""
        seen_by = f"  (query photo {hit.query_photo + 1})" if hit.query_photo is not None else ""
        say(f"  {rank:>3}. {format_name(hit.id)}  {hit.score:.4f}{verdict}{seen_by}{STALE_NOTE.get(hit.stale, '')}")


def check_search_args(args) -> None:
    """Every option that cannot apply is an error, said before any work."""
    batch = args.queries is not None
    if batch and args.query:
        raise SpotitError("give either QUERY images or --queries QUERY_DIR, not both")
    if not batch:
        if not args.query:
            raise SpotitError("give a QUERY image, or --queries QUERY_DIR [--boxes BOX_DIR] for batch mode")
        for option in ("boxes", "ranklist"):
            if getattr(args, option) is not None:
                raise SpotitError(f"--{option} applies to batch mode only: add --queries QUERY_DIR")
        for path in args.query:
            if Path(path).is_dir():
                raise SpotitError(f"{path} is a folder, not a photo: give an index with --index {path}, or "
                                  f"a folder of query photos with --queries {path}")
        if len(args.query) > 1 and args.box and len(args.box) != len(args.query):
            raise SpotitError(f"{len(args.query)} query photos and {len(args.box)} --box: give one --box per photo, in "
                              f"the same order (--box whole: the whole photo), or none")
        if args.grid is not None:
            check_output_file(args.grid, "--grid")
        return
    if args.box:
        raise SpotitError("--box applies to a single QUERY; in batch mode boxes come from --boxes BOX_DIR")
    if args.matches:
        raise SpotitError("--matches applies to a single QUERY: a batch's rank list ranks the whole gallery")
    if args.boxes is not None and not args.boxes.is_dir():
        raise SpotitError(f"box folder not found: {args.boxes}")
    check_output_file(args.ranklist or DEFAULT_RANKLIST, "--ranklist")
    if args.grid is not None:
        check_output_dir(args.grid, "--grid folder")


def cmd_search(args) -> int:
    check_search_args(args)
    if args.queries is not None:
        return search_batch(args)
    several = len(args.query) > 1
    boxes = [None if text.strip() == "whole" else parse_box(text) for text in args.box or []]
    if not several:
        boxes = [box for box in boxes if box is not None]  # "whole" alone: no box
    index = Index.open(args.index, args.weights)
    scope = Scope.of(args.under, args.since, args.until)  # a bad date is said before any photo is read
    images, boxes = query_photos(args.query if several else args.query[0],
                                 (boxes or None) if several else boxes, args.max_pixels)
    args.method = args.method or index.default_method
    results = index.search(images if several else images[0], boxes if several else boxes[0], method=args.method,
                           top=args.top, progress=not args.quiet, matches=args.matches, under=args.under,
                           since=args.since, until=args.until)
    if args.grid:
        from .grid import save_grid

        save_grid(args.grid, images[0], boxes[0], results)
    queries = [str(q) for q in args.query]
    if args.json:
        say(json.dumps({"query": queries if several else queries[0], "boxes": boxes if several else boxes[0],
                        "method": args.method, "results": [r.to_dict() for r in results]}))
    else:
        print_top(f"{' + '.join(queries)} ({args.method}):", results, args.top)
        if not results and scope != Scope():
            say("  no indexed photo is in that scope (--under, --since, --until)" +
                ("" if scope.since is None and scope.until is None else "; photos without an EXIF date are in none"))
        elif args.matches and not results:
            say("  no photo shows it" + (" for sure (--matches yes); try --matches maybe" if args.matches == "yes" else ""))
        if args.grid:
            say(f"grid written to {args.grid}")
    return 0


DEFAULT_RANKLIST = Path("ranklist.txt")


def search_batch(args) -> int:
    """The assignment's layout: QUERY_DIR/NAME.jpg with BOX_DIR/NAME.txt; ranks the whole gallery."""
    index = Index.open(args.index, args.weights)
    args.method = args.method or index.default_method
    queries = find_queries(args.queries)
    if args.grid:
        Path(os.path.realpath(args.grid)).mkdir(parents=True, exist_ok=True)  # a link to a folder to be: made
    lines, failed, report = [], [], []
    for name, path in queries:
        try:
            boxes = []
            if args.boxes is not None:
                box_file = args.boxes / f"{path.stem}.txt"
                if box_file.is_file():
                    boxes = read_box_file(box_file)
                else:
                    eprint(f"{path.name}: no {box_file}, searching the whole image")
            image = as_image(path, max_pixels=args.max_pixels)
            results = index.search(image, boxes, method=args.method, top=None, under=args.under, since=args.since,
                                   until=args.until)
        except SpotitError as exc:
            failed.append(f"{path.name}: {exc}")
            eprint(f"skipped query {exc}" if str(exc).startswith(str(path)) else f"skipped query {path.name}: {exc}")
            continue
        lines.append(ranklist_line(name, [r.id for r in results]))
        if args.grid:
            from .grid import save_grid

            save_grid(Path(args.grid) / f"{name}.png", image, boxes, results)
        if args.json:
            report.append({"query": path.name, "boxes": boxes, "results": [r.to_dict() for r in results[: args.top]]})
        else:
            print_top(f"Q{format_name(name, query=True)} ({args.method}):", results, args.top)
    ranklist = args.ranklist or DEFAULT_RANKLIST
    write_ranklist(ranklist, lines)
    if args.json:
        say(json.dumps({"method": args.method, "ranklist": str(ranklist), "queries": report, "failed": failed}))
    else:
        say(f"rank list of {len(lines)} queries x {len(index)} gallery images written to {ranklist}")
        if args.grid:
            say(f"grids written to {args.grid}/")
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

    check_output_dir(args.out, "--out folder")
    made = make_demo(args.out, seed=args.seed)
    say(f"demo gallery: {made['gallery']} ({sum(1 for _ in made['gallery'].iterdir())} photos)")
    index = Index.open_or_create(args.out / "index", made["gallery"], [args.method], rebuild=True)
    report = index.update(progress=not args.quiet)
    say(f"indexed {count_images(report.processed)}, {report.images_per_s:.1f} images/s")
    image = as_image(made["query"])
    boxes = [made["box"]]
    results = index.search(image, boxes, method=args.method, top=10)
    print_top(f"query {made['query']} with box {','.join(map(str, made['box']))} ({args.method}):", results)
    found = sum(hit.id in made["relevant"] for hit in results[: len(made["relevant"])])
    say(f"{found} of the {len(made['relevant'])} photos with the pasted cup are in the top {len(made['relevant'])}")
    grid = save_grid(args.out / "demo-grid.png", image, boxes, results)
    say(f"grid written to {grid}")
    say(f"search it yourself: spotit search {shlex.quote(str(made['query']))} --box "
        f"{','.join(map(str, made['box']))} --index {shlex.quote(str(args.out / 'index'))} --grid grid.png")
    return 0


# ---- spotit serve ----------------------------------------------------------------------------------
def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (port 0: any free one), or a one-line error saying why not."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise SpotitError(f"cannot listen on {host}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise SpotitError(f"cannot listen on {host}:{port}: {exc.strerror}; choose another --port") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def cmd_serve(args) -> int:
    import uvicorn

    from .app import Service, create_app
    from .app.guard import LOOPBACK_HOSTS, RedactToken

    token = args.token or os.environ.get("SPOTIT_TOKEN") or None
    loopback = args.host in LOOPBACK_HOSTS
    if token and args.no_auth:
        raise SpotitError("give either --token (or $SPOTIT_TOKEN) or --no-auth, not both")
    if not loopback and not token and not args.no_auth:
        raise SpotitError(f"--host {args.host} lets other machines reach the index: give --token T (or set "
                          "$SPOTIT_TOKEN) so that every request must carry it, or --no-auth to serve it to anyone")
    check_watch_args(args)
    index = Index.open(args.index, args.weights)
    service = Service(index, args.max_pixels)
    sock = listening_socket(args.host, args.port)
    service.warm_up()
    if args.watch:
        service.watch(args.watch_settle, args.watch_poll)
    app = create_app(service, token, args.max_upload_mb * 2**20, loopback_only=loopback and not token)
    port = sock.getsockname()[1]
    shown = socket.gethostname() if args.host in ("0.0.0.0", "::") else f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    say(f"spotit serves {index.store.root} ({len(index)} photos of {index.gallery}) at {url}")
    say(f"  API: http://{shown}:{port}/docs   Ctrl-C stops it")
    config = uvicorn.Config(app, log_level="warning" if args.quiet else "info", access_log=not args.quiet,
                            timeout_graceful_shutdown=5)
    logging.getLogger("uvicorn.access").addFilter(RedactToken())
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn has shut down cleanly, then passes the Ctrl-C or SIGTERM on
        pass
    say("spotit serve stopped")
    return 0


# ---- spotit eval / bench ---------------------------------------------------------------------------
def cmd_eval(args) -> int:
    from .evaluation.evaluate import evaluate, format_result

    result = evaluate(args.dataset, args.method, args.index, args.backbone, args.max_queries, progress=not args.quiet)
    say(format_result(result))
    if args.json:
        say(json.dumps(result))
    return 0


def cmd_scale(args) -> int:
    from .evaluation.scale import format_scale, scale

    result = scale(args.dataset, args.images, args.index, args.vectors, args.method, args.max_queries, args.top,
                   args.recall, progress=not args.quiet)
    say(format_scale(result))
    if args.json:
        say(json.dumps(result))
    return 0


def cmd_make_clutter(args) -> int:
    from .evaluation.clutter import ClutterConfig, make_clutter

    turned = args.turned if args.turned is not None else (0.5 if args.hard else None)
    config = ClutterConfig(objects=args.objects, distractor_scenes=args.distractor_scenes,
                           distractor_objects=args.distractor_objects, seed=args.seed,
                           shared_scenes=args.shared_scenes or args.hard, turned=turned)
    made = make_clutter(args.objects_set, args.scenes, args.out, config, progress=not args.quiet)
    say(f"wrote {made['queries']} boxed queries and {made['gallery']} gallery images to {made['out']}")
    return 0


# ---- parser ----------------------------------------------------------------------------------------
EXAMPLES = {
    "index": """examples:
  spotit index ~/Pictures/gallery                      # first run: every photo; later runs: new and changed ones
  spotit index ~/Pictures/gallery --index ~/idx --method all
  spotit index /mnt/new/gallery --index ~/idx --moved  # the gallery folder moved: keep its features
  spotit index ~/Pictures/gallery --rebuild            # start the index anew

An interrupted run (Ctrl-C) keeps every finished photo; run the same command to resume. One update runs
at a time per index: a second is refused (or waits with --wait); searches go on during an update.""",
    "search": """examples:
  spotit search mug.jpg --box 120,80,200,160                   # the gallery ranked for the boxed mug, top 10
  spotit search mug.jpg --box -20,80,200,160 --top 20 --json   # a box may stick out of the photo a little
  spotit search mug.jpg --box 120,80,200,160 --grid result.png
  spotit search --queries query/ --boxes query_txt/ --ranklist rankList.txt   # batch: the assignment's layout""",
    "demo": """example:
  spotit demo --out spotit-demo     # gallery, query, index and demo-grid.png in ./spotit-demo""",
    "serve": """examples:
  spotit serve                                     # the default index at http://127.0.0.1:8000/
  spotit serve --index ~/idx --port 8080
  spotit serve --host 0.0.0.0 --token "$(openssl rand -hex 16)"   # reachable from other machines, with a token
  curl -F image=@mug.jpg -F boxes='[[120,80,200,160]]' -F top=5 http://127.0.0.1:8000/api/search

The page at / lets you pick, drop or paste a query photo, draw boxes on it and see the matches with the
object outlined; /docs documents the HTTP API. One process loads the index and the model once and serves
searches concurrently, also while an update (started from the page or `POST /api/index`) runs.""",
    "eval": """examples:
  spotit eval ../shared/datasets/holidays-dev --method hybrid
  spotit eval path/to/set --method sift --max-queries 30 --json""",
    "scale": """examples:
  spotit bench scale ../shared/datasets/holidays-dev --images 100000
  spotit bench scale ../shared/datasets/clutter-hard-dev --images 1000000 --max-queries 30 --json""",
    "make-clutter": """example:
  spotit bench make-clutter ukbench-dev holidays-dev clutter-mine --seed 0
  spotit bench make-clutter ukbench-dev holidays-dev clutter-hard --seed 2 --hard   # shared scenes, turned views""",
}


def subcommand(sub, name: str, help: str, description: str, func):
    parser = sub.add_parser(name, help=help, description=description, epilog=EXAMPLES.get(name),
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(func=func)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spotit", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Find the gallery photos that show the same object as a query photo (often boxed).",
        epilog="""quick start:
  spotit index ~/Pictures/gallery                   # extract the features of every photo, once
  spotit search mug.jpg --box 120,80,200,160        # the photos that show this mug, best first

`spotit COMMAND --help` explains each command.""")
    parser.add_argument("--version", action="version", version=f"spotit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = subcommand(sub, "index", "extract and store the features of every photo in a gallery folder",
                   "Index a gallery folder (recursively): extract the features of new and changed photos, drop "
                   "deleted ones. The index is a folder of its own, outside the gallery.", cmd_index)
    p.add_argument("gallery", type=Path, help="folder of photos (searched recursively)")
    add_index_arg(p)
    p.add_argument("--method", default=DEFAULT_METHOD, choices=[*METHODS, "all"],
                   help=f"search methods the index serves (default: {DEFAULT_METHOD}, which also serves regional); all: every method")
    p.add_argument("--backbone", default=backbones.DEFAULT_BACKBONE, choices=list(backbones.confs),
                   help=f"CNN backbone (default: {backbones.DEFAULT_BACKBONE})")
    p.add_argument("--weights", type=Path, help="weights file for the backbone (resnet18: torchvision's resnet18-f37072fd.pth)")
    p.add_argument("--rebuild", action="store_true",
                   help="empty the index and extract every photo again; deletes only spotit's own files in the "
                        "index folder (catalogue, shards, derived arrays), never the gallery or other files")
    p.add_argument("--moved", action="store_true",
                   help="the gallery folder was moved or renamed to GALLERY: re-point the index to it, keeping the "
                        "features of photos whose size and time are unchanged")
    p.add_argument("--wait", action="store_true", help="if another update of this index is running, wait for it instead of stopping")
    p.add_argument("--vectors", metavar="KIND_OR_URI",
                   help="where the region shortlist searches. In faiss, inside the index: auto (the default; also "
                        f"called faiss: exact up to {vectors.AUTO_EXACT_PHOTOS:,} photos, then ivfpq), exact (every "
                        "region in memory) or ivfpq (IVF with PQ codes, best candidates re-scored exactly). Or in "
                        "Milvus: a Milvus Lite file (PATH.db, one "
                        "process at a time) or a server (http://host:19530). Recorded in the index: searches and "
                        "`spotit serve` need no flag. The cnn method's descriptors follow it: exact in memory, else "
                        "a faiss flat index of float16 codes (also beside Milvus). Milvus needs pip install 'spotit[cluster]'")
    p.add_argument("--exclude", action="append", metavar="GLOB",
                   help="leave out files or folders matching GLOB (on the name; with a /, on the path in the gallery); "
                        "repeat for more. Always left out: " + ", ".join(pattern for pattern, _ in DEFAULT_EXCLUDES) +
                        ". Recorded in the index; given again, the globs replace the recorded ones")
    p.add_argument("--no-exclude", action="store_true", help="forget the recorded --exclude globs")
    add_watch_args(p, "keep running, and update the index whenever photos are added, changed, moved or deleted")
    p.add_argument("--catalogue", metavar="sqlite|URI",
                   help="where the catalogue (which photos, where their features are) lives: sqlite, inside the index "
                        "folder (the default), or a Milvus server (http://host:19530) for an index folder on a shared "
                        "file system that spotit processes on several machines open (a Milvus Lite PATH.db works for "
                        "one process at a time); moving it needs --rebuild")
    p.add_argument("--milvus-token", metavar="TOKEN",
                   help=f"token of a Milvus server (default: ${MILVUS_TOKEN_ENV}; searches read it from there, never from the index)")
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="extract on a Ray cluster (Ray Data): its ADDRESS (host:6379, ray://host:10001 or auto), or none "
                        "for a local one with a worker per core (put a bare --ray after GALLERY); without Ray installed, "
                        "a bare --ray uses local threads")
    add_max_pixels_arg(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = subcommand(sub, "search", "rank the gallery for a query photo (or a folder of boxed queries)",
                   "Rank the indexed gallery for a query photo, cropped to its boxes, and print the best matches. "
                   "Batch mode (--queries) ranks the whole gallery for every query and writes a rank list whose "
                   "ids follow the rule in the README (names with commas, quotes or colons are JSON-quoted).",
                   cmd_search)
    p.add_argument("query", nargs="*", type=Path,
                   help="query photo; several photos of one object (front, side...) are searched together")
    p.add_argument("--box", action="append", metavar="X,Y,W,H",
                   help="crop the query to this box (pixels, top-left origin; negative x or y allowed); repeat for "
                        "several instances. With several query photos: one --box per photo, in order ('whole': "
                        "the whole photo)")
    add_index_arg(p)
    p.add_argument("--method", choices=list(METHODS),
                   help=f"ranking method (default: {DEFAULT_METHOD} if the index serves it)")
    p.add_argument("--top", type=positive_int, default=10, help="results to show (default: 10)")
    p.add_argument("--matches", nargs="?", const="maybe", choices=["yes", "maybe"],
                   help="only the photos that show the object, by the verdict (hybrid): yes, or maybe (yes and "
                        "maybe; the default); stops there instead of filling --top")
    p.add_argument("--under", metavar="FOLDER", help="search only the photos in this folder of the gallery")
    p.add_argument("--since", metavar="DATE", help="search only photos taken on or after DATE (2024-06-01, from EXIF)")
    p.add_argument("--until", metavar="DATE", help="search only photos taken on or before DATE (2024-06-30, from EXIF)")
    p.add_argument("--json", action="store_true", help="print results as JSON")
    p.add_argument("--grid", type=Path, help="write a PNG of the query and its --top best results (a folder of them in batch mode)")
    p.add_argument("--queries", type=Path, help="batch mode: folder of query images")
    p.add_argument("--boxes", type=Path, help="batch mode: folder of NAME.txt box files, one 'x y w h' line per box")
    p.add_argument("--ranklist", type=Path, help=f"batch mode: rank list to write (default: {DEFAULT_RANKLIST})")
    p.add_argument("--weights", type=Path, help="backbone weights, if the index was built with --weights")
    add_max_pixels_arg(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = subcommand(sub, "demo", "build a demo gallery from real photos, index it and search it",
                   "Build a 20-photo demo gallery from the sample photos that ship with scikit-image, index it, "
                   "search it for a boxed cup and draw the result. Works offline.", cmd_demo)
    p.add_argument("--out", type=Path, default=Path("spotit-demo"), help="folder for the demo (default: ./spotit-demo)")
    p.add_argument("--method", default=DEFAULT_METHOD, choices=list(METHODS), help=f"ranking method (default: {DEFAULT_METHOD})")
    p.add_argument("--seed", type=int, default=0, help="random seed of the demo gallery")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = subcommand(sub, "serve", "search from a browser, and over HTTP",
                   "Serve an index: a web page to search it by drawing boxes on a query photo, and a JSON API "
                   "(documented at /docs). Binds to 127.0.0.1 unless told otherwise; any other host needs a token.",
                   cmd_serve)
    add_index_arg(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=port_number, default=8000, help="port to listen on (default: 8000; 0: any free port)")
    p.add_argument("--token", help="every request must carry this token (header 'Authorization: Bearer T', or open "
                                   "the page once with ?token=T); default: $SPOTIT_TOKEN. Required with another --host")
    add_watch_args(p, "update the index whenever photos in the gallery are added, changed, moved or deleted (the "
                      "page shows the progress)")
    p.add_argument("--no-auth", action="store_true", help="serve another --host without a token: anyone who reaches it may search")
    p.add_argument("--max-upload-mb", type=positive_int, default=25, metavar="MB",
                   help="refuse uploads larger than this many MiB with 413 (default: 25)")
    p.add_argument("--weights", type=Path, help="backbone weights, if the index was built with --weights")
    add_max_pixels_arg(p)
    p.add_argument("--quiet", action="store_true", help="no log line per request")

    p = subcommand(sub, "eval", "measure quality and speed on a benchmark set",
                   "Index a benchmark set (cached), run every query and print mAP, precision, N-S and speed; on a set "
                   "that knows where each object is (`spotit bench make-clutter`'s placements.json), also how often "
                   "a verified result's box overlaps it (IoU >= 0.5) and how many wrong results carry a box.", cmd_eval)
    p.add_argument("dataset", type=Path, help="benchmark folder (images/+groundtruth.json, assignment layout, or revisited Oxford/Paris)")
    p.add_argument("--method", default=DEFAULT_METHOD, choices=list(METHODS), help=f"ranking method (default: {DEFAULT_METHOD})")
    p.add_argument("--index", type=Path, default=None, help="index folder (default: one per dataset in the cache folder)")
    p.add_argument("--backbone", default=backbones.DEFAULT_BACKBONE, choices=list(backbones.confs),
                   help=f"CNN backbone (default: {backbones.DEFAULT_BACKBONE})")
    p.add_argument("--max-queries", type=positive_int, default=None, metavar="N", help="evaluate at most N queries, evenly spread (slow methods)")
    p.add_argument("--json", action="store_true", help="end with one line of JSON holding every figure")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = subcommand(sub, "bench", "benchmark tools (make-clutter, scale)",
                   "Tools that make benchmark sets and measure spotit at scale.", None)
    p.epilog = EXAMPLES["make-clutter"]
    bench = p.add_subparsers(dest="bench_command", metavar="TOOL", required=True)
    p = subcommand(bench, "make-clutter", "paste object views into scene photos: a boxed-query benchmark",
                   "Paste views of objects into scene photos: a boxed-query benchmark in the assignment's layout, "
                   "with placements.json saying where each view lies. Deterministic for a seed.", cmd_make_clutter)
    p.add_argument("objects_set", metavar="OBJECTS", type=Path, help="set with images/ + groundtruth.json grouping views of objects")
    p.add_argument("scenes", metavar="SCENES", type=Path, help="folder (or set) of scene photos")
    p.add_argument("out", metavar="OUT", type=Path, help="new folder for the benchmark")
    p.add_argument("--seed", type=int, default=0, help="random seed: the same seed makes the same set (default: 0)")
    p.add_argument("--objects", type=positive_int, default=60, help="objects with a boxed query (default: 60)")
    p.add_argument("--distractor-scenes", type=int, default=300, help="gallery scenes without an object (default: 300)")
    p.add_argument("--distractor-objects", type=int, default=60, help="other objects pasted as distractors (default: 60)")
    p.add_argument("--shared-scenes", action="store_true",
                   help="draw query and gallery scenes from one pool, and put each query's scene into the gallery "
                        "without the object (a photo of the same place is then no match)")
    p.add_argument("--turned", type=fraction, metavar="F",
                   help="turn a share F of the gallery views anywhere up to 180 degrees, the rest up to 20 "
                        "(default: half near upright, a fifth anywhere)")
    p.add_argument("--hard", action="store_true", help="clutter-hard-dev's conditions: --shared-scenes --turned 0.5")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = subcommand(bench, "scale", "a set's real queries against its gallery plus simulated distractors",
                   "Index a benchmark set (as `spotit eval` does), add simulated distractors made from its own "
                   "features until the index holds N photos, then run the set's real queries in a fresh process: "
                   "mAP, latency, peak memory, time to the first answer, disk per photo. The scale index is kept "
                   "in the cache and reused. How distractors are made: `python -m pydoc spotit.evaluation.scale`.", cmd_scale)
    p.epilog = EXAMPLES["scale"]
    p.add_argument("dataset", type=Path, help="benchmark folder, as for `spotit eval`")
    p.add_argument("--images", type=positive_int, required=True, metavar="N", help="photos in the index in all")
    p.add_argument("--vectors", choices=vectors.CHOICES, default="auto", help="vector index kind (default: auto)")
    p.add_argument("--method", default="hybrid", choices=["hybrid", "regional", "cnn"],
                   help="search method (default: hybrid; cnn gets a scale index of its own)")
    p.add_argument("--max-queries", type=positive_int, help="run at most this many queries, spread over the set")
    p.add_argument("--top", type=positive_int, default=1000, help="rank this many photos per query (default: 1000)")
    p.add_argument("--recall", action="store_true",
                   help="also measure the vector shortlist's recall@100 against exact search (holds every region in memory)")
    p.add_argument("--index", type=Path, help="folder for the scale index (default: one in the cache per set and N, reused)")
    p.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def bare_matches(argv: list[str]) -> list[str]:
    """`--matches` followed by anything but yes or maybe is `--matches maybe`: a query photo after it is not
    taken for its value."""
    out = []
    for i, arg in enumerate(argv):
        out.append(arg)
        if arg == "--matches" and (i + 1 == len(argv) or argv[i + 1] not in ("yes", "maybe")):
            out.append("maybe")
    return out


def check_watch_args(args) -> None:
    if not args.watch and (args.watch_poll is not None or args.watch_settle is not None):
        raise SpotitError("--watch-poll and --watch-settle apply with --watch only")
    if args.watch_settle is None:
        args.watch_settle = SETTLE_S


def join_negative_boxes(argv: list[str]) -> list[str]:
    """`--box -50,-50,100,100` -> `--box=-50,-50,100,100`: argparse takes a value starting with '-' for an option."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--box" and i + 1 < len(argv) and argv[i + 1].startswith("-") and argv[i + 1][1:2].isdigit():
            out.append(f"--box={argv[i + 1]}")
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


def interrupt_once(signum, frame):
    """Ctrl-C or `kill` stop spotit as KeyboardInterrupt; further ones are ignored while the finished
    work is committed (a second Ctrl-C there would tear down the worker threads mid-call)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = bare_matches(join_negative_boxes(sys.argv[1:] if argv is None else list(argv)))
    if not argv:
        parser.print_help()
        return 0
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    on_main_thread = threading.current_thread() is threading.main_thread()
    old_handlers = {sig: signal.signal(sig, interrupt_once) for sig in (signal.SIGINT, signal.SIGTERM)} if on_main_thread else {}
    started = time.perf_counter()
    try:
        code = args.func(args)
    except SpotitError as exc:
        eprint(f"spotit: error: {exc}")
        return 2
    except OSError as exc:  # the disk filled up, a folder became unwritable... mid-way: said in one line
        eprint(f"spotit: error: {exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}")
        return 2
    except KeyboardInterrupt:
        eprint("spotit: interrupted")
        return 130
    finally:
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
    eprint(f"{args.command} took {time.perf_counter() - started:.1f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
