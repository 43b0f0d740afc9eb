"""An index folder's life before extraction: create it, open it for a gallery, rebuild it, add a method,
re-point a moved gallery. Each change happens under the write lock and ends in a commit."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from .. import vectors
from ..errors import SpotitError
from ..features import backbones, global_features, local_features
from ..features.extractors import METHOD_KINDS
from ..storage.lock import WriterLock
from ..storage.store import FORMAT, Store, catalogue_for, check_index_folder, describe, read_manifest

METHODS = tuple(METHOD_KINDS)
DEFAULT_CONFS = {"global": "seed", "regions": "gem-regions", "sift": "seed", "verify": "verify"}


def feature_settings(backbone: str, confs: dict) -> dict:
    """Everything that decides the stored features; an index whose settings differ must be rebuilt."""
    return {
        "backbone": backbones.confs[backbone],
        "global": global_features.confs[confs["global"]],
        "regions": global_features.regional_confs[confs["regions"]],
        "sift": local_features.confs[confs["sift"]],
        "verify": local_features.confs[confs["verify"]],
    }


def default_index_dir() -> Path:
    """$SPOTIT_INDEX, else $XDG_DATA_HOME/spotit/index, else ~/.local/share/spotit/index."""
    if os.environ.get("SPOTIT_INDEX"):
        return Path(os.environ["SPOTIT_INDEX"])
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "spotit" / "index"


def parse_methods(method: str) -> list[str]:
    """'cnn', 'sift', 'hybrid' or 'all' -> the search methods an index must serve."""
    if method == "all":
        return list(METHODS)
    if method not in METHODS:
        raise SpotitError(f"unknown method {method!r}; choose {', '.join(METHODS)} or all")
    return [method]


def open_or_create(path: Path, gallery, methods, backbone: str, weights, rebuild: bool, confs: dict | None,
                   moved: bool, wait: bool, new: bool, vectors_choice: str | None = None,
                   catalogue_choice: str | None = None, exclude: list[str] | None = None) -> Store:
    """The committed state of the index folder `path` after Index.open_or_create's request (see there);
    `new` refuses an existing index."""
    methods = check_methods(methods)
    if vectors_choice is not None:
        vectors_choice = vectors.parse_choice(vectors_choice)  # refuses an unknown one
        if vectors.resolve(vectors_choice, 0) == "milvus":  # reachable, before the index records it
            from ..cluster.milvus import client

            client(vectors_choice)
    if catalogue_choice not in (None, "sqlite"):
        from ..cluster.milvus import client, is_uri, normalise_uri

        if not is_uri(catalogue_choice):
            raise SpotitError(f"--catalogue {catalogue_choice}: give sqlite (in the index folder), a Milvus Lite "
                              f"file (*.db) or a Milvus server (http(s)://host:19530)")
        client(normalise_uri(catalogue_choice))  # reachable, before anything is written
    backbones.check_backbone(backbone)
    check_index_folder(path)
    gallery_path = Path(gallery).resolve() if gallery is not None else None
    if gallery_path is not None:
        if not gallery_path.is_dir():
            raise SpotitError(f"gallery folder not found: {gallery_path}")
        if path.resolve() == gallery_path or gallery_path in path.resolve().parents:
            raise SpotitError(f"the index {path} must be outside the gallery {gallery_path}")
    if moved and (rebuild or not Store.exists(path)):
        raise SpotitError("--moved re-points an existing index to its moved gallery; "
                          f"{'--rebuild extracts every photo anyway' if rebuild else f'{path} holds no index yet'}")
    if new and Store.exists(path):
        raise SpotitError(f"{path} already holds an index; open it, or rebuild it")
    if gallery_path is None and (rebuild or not Store.exists(path)):
        raise SpotitError(f"give the gallery folder to {'rebuild' if rebuild else 'build'} the index at {path}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SpotitError(f"cannot create the index folder {path}: {exc.strerror}") from None
    with WriterLock(path).acquire(wait):
        check_index_folder(path, locked=True)  # a creation that was in progress is finished now
        old = open_for_rebuild(path) if rebuild else Store.open(path) if Store.exists(path) else None
        if old is None and gallery_path is None:
            raise SpotitError(f"no index at {path}: give the gallery folder to build one")
        moving = old is not None and describe(catalogue_for(path, catalogue_choice)) != describe(old.catalogue)
        if moving and not rebuild:
            raise SpotitError(f"the catalogue of {path} is in {old.catalogue}; to move it to {catalogue_choice}, "
                              f"add --rebuild (every photo is extracted again)")
        settings = None if gallery_path is None else {
            "gallery": str(gallery_path), "methods": sorted(set(methods)), "backbone": backbone,
            "weights": str(Path(weights).resolve()) if weights else None,
            "confs": {**DEFAULT_CONFS, **(confs or {})},
            "vectors": vectors_choice or (old.manifest.get("vectors") if old is not None else None) or "auto",
            "exclude": list(exclude if exclude is not None else old.manifest.get("exclude", []) if old is not None else []),
            # names this index's collections in a shared Milvus; a rebuild keeps it, so it drops the old ones
            "uid": (old.manifest.get("uid") if old is not None else None) or secrets.token_hex(6),
            "uid_root": os.path.realpath(path),
        }
        if settings is not None:
            settings["feature_settings"] = feature_settings(backbone, settings["confs"])
        if old is not None and rebuild and not moving and old.manifest.get("format") == FORMAT and \
                same_features(old.manifest, settings):
            # extract every photo again; until each is replaced, its old features keep serving searches
            mark_stale(old.images)
            old.manifest.update(methods=settings["methods"], skipped={}, exclude=settings["exclude"],
                                vectors=vectors_choice or old.manifest.get("vectors", "auto"))
            old.commit()
            return old
        if old is None or rebuild or (not old.images and not same_features(old.manifest, settings)):
            store = Store.create(path, {**settings, "weights_sha256": None}, previous=old, catalogue=catalogue_choice)
            store.remove_unused()  # the old state's files, now that nothing points to them
            return store
        adopt(old, gallery_path, methods, backbone, moved, vectors_choice, exclude)
    return old


def open_for_rebuild(path: Path) -> Store | None:
    """The index to rebuild at `path`, also one in another format: its numbering is what a rebuild needs."""
    try:
        return Store.open(path) if Store.exists(path) else None
    except SpotitError:
        manifest = read_manifest(path)
        return Store(path, manifest, manifest.get("images") if isinstance(manifest.get("images"), dict) else {})


def adopt(store: Store, gallery: Path | None, methods, backbone: str, moved: bool, vectors_choice: str | None,
          exclude: list[str] | None = None) -> None:
    """Check an existing index against what the caller asked for; add methods, re-point a moved gallery,
    change the kind of vector index (made by the next update) or the globs of files to leave out."""
    manifest, root = store.manifest, store.root
    if gallery is not None and gallery != Path(manifest["gallery"]):
        if not moved:
            raise SpotitError(
                f"index {root} belongs to gallery {manifest['gallery']}; if that folder was moved to {gallery}, "
                f"add --moved to re-point the index; else use another --index, or --rebuild to replace it"
            )
        manifest["gallery"] = str(gallery)
    elif moved:
        raise SpotitError(f"--moved: index {root} already belongs to {manifest['gallery']}")
    if backbone != manifest["backbone"]:
        raise SpotitError(
            f"index {root} was built with backbone {manifest['backbone']}, not {backbone}; "
            f"use another --index, or --rebuild"
        )
    built = kinds_of(manifest["methods"])
    wanted = set(methods) - set(served_methods(built)) - set(manifest.get("pending_methods", []))
    if wanted:
        # every image must hold every kind of feature, so a method needing new kinds re-extracts all; it is
        # served once the update has done so, and until then searches go on with the methods there are
        manifest["pending_methods"] = sorted(set(manifest.get("pending_methods", [])) | wanted)
        mark_stale(store.images)
    changed_vectors = vectors_choice is not None and vectors_choice != manifest.get("vectors", "auto")
    if changed_vectors:
        manifest["vectors"] = vectors_choice
    changed_exclude = exclude is not None and list(exclude) != manifest.get("exclude", [])
    if changed_exclude:
        manifest["exclude"] = list(exclude)
    if wanted or moved or changed_vectors or changed_exclude:
        store.commit()


def mark_stale(images: dict) -> None:
    """Every photo to be extracted again by the next update (its features serve until then)."""
    for name, entry in list(images.items()):
        images[name] = {**entry, "stale": True}


def same_features(manifest: dict, settings: dict | None) -> bool:
    """Whether an index holds the features `settings` ask for, of the same gallery."""
    if settings is None:
        return True
    keys = ("gallery", "backbone", "weights", "feature_settings")
    built = [m for m in manifest.get("methods", []) if m in METHOD_KINDS]
    return all(manifest.get(k) == settings[k] for k in keys) and set(kinds_of(built)) == set(kinds_of(settings["methods"]))


def check_methods(methods) -> list[str]:
    """The methods an index must serve, refused with the reason when they are not a list of known ones."""
    if isinstance(methods, str):
        methods = [methods]
    methods = list(methods)
    unknown = [m for m in methods if m not in METHODS]
    if not methods or unknown:
        raise SpotitError(f"unknown method(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
                          f"choose from {', '.join(METHODS)}")
    return methods


def kinds_of(methods) -> list[str]:
    return sorted({kind for method in methods for kind in METHOD_KINDS[method]})


def served_methods(kinds) -> list[str]:
    """Every method the stored feature kinds serve: a hybrid index also serves `regional`."""
    return [m for m in METHODS if set(METHOD_KINDS[m]) <= set(kinds)]
