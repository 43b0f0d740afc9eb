"""The region shortlist in Milvus, through pymilvus' MilvusClient: a Milvus Lite file (`*.db`, one process at
a time) or a Milvus server or cluster (`http(s)://host:19530`, shared by any number of processes).

Each learned version of an index has its own collection, `spotit_<index uid>_<version>`, holding every
live region under the same id faiss would give it (vectors.region_ids): removed photos need no deletion
(their ids no longer map to a photo), and a re-learning fills a new collection that one commit switches
to. Searches find candidate photos here and re-score them exactly from the stored regions, as the faiss
IVF-PQ path does (vectors.ApproximateRegions)."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from pathlib import Path

import numpy as np

from ..errors import BackendError, SpotitError
from . import first_line, public, require

TOKEN_ENV = "SPOTIT_MILVUS_TOKEN"
BATCH = 2000  # rows per insert: well under Milvus' 64 MB message limit at 512 float32 dims

confs = {
    # neighbours: regions fetched per query view (at most 14 a photo: covers the best ~100 photos, the
    # hybrid shortlist, of each view); rescore: candidate photos re-scored exactly
    "milvus": {"kind": "milvus", "neighbours": 1500, "rescore": 1500, "probe": None,
               # Milvus Lite searches exactly (FLAT); a server gets HNSW, searched with ef = neighbours
               "lite_index": {"index_type": "FLAT", "metric_type": "IP"},
               "server_index": {"index_type": "HNSW", "metric_type": "IP", "params": {"M": 16, "efConstruction": 200}}},
}


def is_uri(choice: str) -> bool:
    return choice.endswith(".db") or choice.startswith(("http://", "https://"))


def normalise_uri(choice: str) -> str:
    """A Milvus Lite path made absolute (searches may run elsewhere); a server address as given."""
    if choice.startswith(("http://", "https://")):
        return choice.rstrip("/")
    path = Path(choice).expanduser().absolute()
    if not path.parent.is_dir():
        raise SpotitError(f"--vectors {choice}: folder {path.parent} does not exist")
    return str(path)


def is_lite(uri: str) -> bool:
    return not uri.startswith(("http://", "https://"))


_clients: dict[str, object] = {}
_clients_lock = threading.Lock()


def client(uri: str):
    """One MilvusClient per URI in this process: Milvus Lite lets a single client hold its file."""
    with _clients_lock:
        if uri not in _clients:
            # gRPC's own log (read when it is imported) reports Milvus Lite's keep-alive refusals as errors,
            # though the client reconnects by itself
            os.environ.setdefault("GRPC_VERBOSITY", "NONE")
            pymilvus = require("pymilvus", f"vectors in Milvus ({public(uri)})")
            # their failures are said once, by spotit; pymilvus asks Milvus Lite for calls it lacks, which its
            # in-process gRPC server logs as errors though the client goes on without them
            for logger in ("pymilvus", "grpc._server", "milvus_lite"):
                logging.getLogger(logger).setLevel(logging.CRITICAL)
            try:
                _clients[uri] = pymilvus.MilvusClient(uri, token=os.environ.get(TOKEN_ENV, ""))
            except Exception as exc:  # pymilvus raises its own types, and OSError or RuntimeError from Lite
                hint = ("a Milvus Lite file opens in one process at a time; use a Milvus server to share it"
                        if is_lite(uri) else "is the server up, and is the token right?")
                raise BackendError(f"cannot open Milvus at {public(uri)}: {first_line(exc)} ({hint})") from None
        return _clients[uri]


@contextlib.contextmanager
def failures(what: str):
    """Any error of pymilvus or of the server, as a one-line SpotitError saying what failed."""
    try:
        yield
    except SpotitError:
        raise
    except Exception as exc:  # pymilvus raises MilvusException, grpc errors, and ValueError on bad input
        raise BackendError(f"{what} failed: {first_line(exc)}") from None


def collection_name(uid: str, version: int) -> str:
    return f"spotit_{uid}_{version}"


class MilvusRegions:
    """One learned version's regions in Milvus: `add` them shard by shard, `search` them like a faiss index.
    It connects when first used: an index leaving an unreachable Milvus must not need it."""

    def __init__(self, uri: str, name: str, conf: dict = confs["milvus"]):
        self.uri, self.name, self.conf = uri, name, conf
        self.nprobe = None  # what ApproximateRegions sets on faiss indexes; unused here
        self.loaded = False

    @property
    def client(self):
        return client(self.uri)

    def create(self, dims: int) -> "MilvusRegions":
        """Make the (empty) collection; an earlier one of this name, left by an interrupted update, is replaced."""
        mine = self.client  # first: it says so in one line when pymilvus is not installed
        from pymilvus import DataType

        with failures(f"creating collection {self.name} in Milvus at {public(self.uri)}"):
            if mine.has_collection(self.name):
                self.client.drop_collection(self.name)
            schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("id", DataType.INT64, is_primary=True)
            schema.add_field("region", DataType.FLOAT_VECTOR, dim=int(dims))
            params = self.client.prepare_index_params()
            params.add_index("region", **self.conf["lite_index" if is_lite(self.uri) else "server_index"])
            # strong: a search right after the commit that switched to this collection sees all of it
            self.client.create_collection(self.name, schema=schema, index_params=params, consistency_level="Strong")
        return self

    def add(self, ids: np.ndarray, regions: np.ndarray) -> None:
        """Insert (or replace: a shard derived again after an interruption) regions under their ids."""
        regions = np.ascontiguousarray(regions, np.float32)
        with failures(f"writing regions to {self.name} in Milvus at {public(self.uri)}"):
            for start in range(0, len(ids), BATCH):
                rows = [{"id": int(i), "region": v} for i, v in zip(ids[start:start + BATCH], regions[start:start + BATCH])]
                self.client.upsert(self.name, rows)

    def delete_range(self, low: int, high: int) -> None:
        """Remove the regions with ids in [low, high): a shard that compaction replaced."""
        with failures(f"deleting regions from {self.name} in Milvus at {public(self.uri)}"):
            self.client.delete(self.name, filter=f"id >= {int(low)} and id < {int(high)}")

    def search(self, vectors: np.ndarray, k: int):
        """(similarities, ids) of the k nearest regions of each vector, as faiss gives them (-1: none)."""
        params = {} if is_lite(self.uri) else {"params": {"ef": max(k, 64)}}
        try:
            if not self.loaded:  # a collection is searchable once loaded, which each process makes sure of
                self.client.load_collection(self.name)
                self.loaded = True
            hits = self.client.search(self.name, data=np.ascontiguousarray(vectors, np.float32), limit=int(k),
                                      anns_field="region", output_fields=["id"], search_params=params,
                                      consistency_level="Strong")
        except SpotitError:
            raise  # cannot connect at all: said as it is
        except Exception as exc:
            raise MilvusGone(first_line(exc)) from None
        sims = np.full((len(vectors), k), -np.inf, np.float32)
        ids = np.full((len(vectors), k), -1, np.int64)
        for row, found in enumerate(hits):
            ids[row, : len(found)] = [hit["id"] for hit in found]
            sims[row, : len(found)] = [hit["distance"] for hit in found]
        return sims, ids


class MilvusGone(Exception):
    """A search of a collection failed; it may have been replaced by a newer commit (the searcher decides)."""


def drop_unused(uri: str, uid: str, keep: str | None) -> None:
    """Drop this index's collections in Milvus at `uri` except `keep`."""
    pattern = re.compile(rf"spotit_{re.escape(uid)}_\d+")
    mine = client(uri)
    with failures(f"dropping unused collections in Milvus at {public(uri)}"):
        for name in mine.list_collections():
            if pattern.fullmatch(name) and name != keep:
                mine.drop_collection(name)
