"""Feature extraction on a Ray cluster with Ray Data: workers decode the photos and run the CNN and SIFT;
the updater (the index's one writer) receives their features in order and commits them as it does those
of its own threads, so an index made on Ray is the one made locally, with the same guarantees.

Workers read the photos at the gallery's path, so on a real cluster the gallery (and the model cache, or
network access to make it) must be at the same path on every node, e.g. a shared file system."""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import socket
import threading

import numpy as np

from ..errors import BackendError
from ..features.extractors import Extractors
from . import first_line, public, require

LOCAL_STARTS = 2  # a local Ray that fails to start is started afresh once more
BATCH = 4  # photos per task: small, so a worker that dies loses little and the writer commits steadily


class _Extract:
    """One Ray worker's extractor (an actor): the model is loaded once, then photo after photo."""

    def __init__(self, root: str, manifest: dict, weights, cache: str, gallery: str, kinds: list[str],
                 max_pixels: int | None):
        import cv2

        if not os.path.isdir(gallery):  # else every photo would come back "not found", and drop out of the index
            raise RuntimeError(f"gallery {gallery} is not mounted on Ray node {os.uname().nodename}")
        os.environ["SPOTIT_CACHE"] = cache
        cv2.setNumThreads(1)  # one photo at a time per worker, one core each
        self.features = Extractors(root, manifest, weights)
        self.features.backbone().set_threads(1)
        self.features.load(kinds)
        self.gallery, self.kinds, self.max_pixels = gallery, kinds, max_pixels

    def __call__(self, batch: dict) -> dict:
        from ..indexing.extract import load_and_extract

        done = [pickle.dumps(load_and_extract(self.features, self.gallery, str(name), self.kinds, self.max_pixels))
                for name in batch["name"]]
        return {"payload": np.array(done, dtype=object)}


def extraction_settings(manifest: dict) -> dict:
    """What a worker needs of the index's settings to extract as the writer would (small: sent to each)."""
    return {key: manifest.get(key) for key in ("backbone", "weights", "weights_sha256", "confs")}


def connect(address: str, workers: int):
    """Ray, connected: to the cluster at `address`, or to a local one of `workers` CPUs ("local");
    an already connected Ray is used as it is. Returns (ray, whether this call started it)."""
    ray = require("ray", "--ray")
    require("ray.data", "--ray")
    for logger in ("ray", "ray.data"):  # the updater reports progress and errors itself
        logging.getLogger(logger).setLevel(logging.ERROR)
    if ray.is_initialized():
        return ray, False
    check_reachable(address)
    options = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
    # A local raylet can miss Ray's fixed 30 s start-up window on a busy machine.
    attempts = LOCAL_STARTS if address == "local" else 1
    with own_signal_handlers():
        for attempt in range(1, attempts + 1):
            before = descendants()
            try:
                if address == "local":
                    ray.init(num_cpus=workers, **options)
                else:
                    ray.init(address=address, **options)
                return ray, True
            except Exception as exc:  # ConnectionError, RuntimeError, ValueError... from Ray: said in one line
                with contextlib.suppress(Exception):
                    ray.shutdown()
                end_processes_since(before)
                if attempt == attempts:
                    raise BackendError(f"cannot connect to Ray at {address}: {first_line(exc)}") from None


def descendants() -> set:
    """This process's child processes, theirs and so on (psutil.Process objects; none without psutil)."""
    try:
        import psutil
    except ImportError:  # Ray installed without spotit's cluster extra
        return set()
    return set(psutil.Process().children(recursive=True))


def end_processes_since(before: set, timeout: float = 10) -> None:
    """End the processes started since `before` (descendants()): a failed local start leaves its GCS server
    and raylet running, which ray.shutdown() does not know of when the node never came up."""
    try:
        import psutil
    except ImportError:
        return
    started = [process for process in descendants() if process not in before]
    for process in started:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    for process in psutil.wait_procs(started, timeout=timeout)[1]:
        with contextlib.suppress(psutil.Error):
            process.kill()


def check_reachable(address: str, timeout: float = 5) -> None:
    """A cluster address (host:port or ray://host:port) must answer at once: Ray itself retries for minutes.
    "auto" is the cluster that $RAY_ADDRESS names, else the one `ray start` last started on this machine."""
    if address == "local":
        return
    said = address
    if address == "auto":
        address = auto_address()
        if address is None:
            return
        said = f"auto ({public(address)})"
    host, _, port = address.split("://")[-1].rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except (OSError, ValueError):
        raise BackendError(f"cannot reach Ray at {public(said)}: nothing answers there (give the head node's "
                           "host:port, or ray://host:10001 for a Ray client server)") from None


def auto_address() -> str | None:
    """The address Ray reads "auto" as, or None where this Ray cannot say before connecting."""
    named = os.environ.get("RAY_ADDRESS", "")
    if named not in ("", "auto", "local"):  # as ray.init reads it: a ray:// client address too
        return named
    try:
        from ray._private.services import canonicalize_bootstrap_address  # Ray's own reading; not public API
    except ImportError:
        return None
    try:
        return canonicalize_bootstrap_address("auto")
    except ConnectionError:
        raise BackendError("cannot connect to Ray at auto: no Ray cluster is running here, and $RAY_ADDRESS names "
                           "none (start one with `ray start --head`, or give --ray host:port)") from None
    except ValueError as exc:
        raise BackendError(f"cannot connect to Ray at auto: {first_line(exc)}") from None


@contextlib.contextmanager
def own_signal_handlers():
    """Keep spotit's SIGINT/SIGTERM handlers (commit the finished photos, then stop) over the ones Ray installs."""
    on_main = threading.current_thread() is threading.main_thread()
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)} if on_main else {}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def extract_on_ray(address: str, features: Extractors, gallery: str, todo: list[str], kinds: list[str],
                   max_pixels: int | None, workers: int):
    """(name, stamp or None, features or why skipped) of each photo of `todo`, in order, extracted by
    `workers` Ray workers ("local": a Ray started here with that many CPUs; a cluster: one per CPU it has)."""
    from ..features import backbones

    ray, started = connect(address, workers)
    try:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # the same shards as the local path writes
        context.enable_progress_bars = False  # the updater shows its own
        actors = workers if address == "local" else max(1, int(ray.cluster_resources().get("CPU", workers)))
        dataset = ray.data.from_items([{"name": name} for name in todo]).map_batches(
            _Extract, batch_size=BATCH, compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=1,
            batch_format="numpy",
            fn_constructor_kwargs={"root": str(features.root), "manifest": extraction_settings(features.manifest),
                                   "weights": features.weights, "cache": str(backbones.cache_dir()),
                                   "gallery": gallery, "kinds": kinds, "max_pixels": max_pixels})
        batches = iter(dataset.iter_batches(batch_size=None, batch_format="numpy"))
        try:
            for batch in batches:
                for payload in batch["payload"]:
                    yield pickle.loads(payload)
        except Exception as exc:  # a task that failed on every retry, a lost cluster: Ray's own error types
            raise BackendError(f"extraction on Ray failed: {first_line(exc, last=True)}") from None
        finally:
            getattr(batches, "close", lambda: None)()  # its executor stops before Ray does
    finally:
        if started:
            with own_signal_handlers():
                ray.shutdown()
