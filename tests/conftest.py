import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory):
    """Exported models go to one folder per test session (the export runs once, offline)."""
    cache = os.environ.get("SPOTIT_TEST_CACHE") or str(tmp_path_factory.mktemp("model-cache"))
    old = os.environ.get("SPOTIT_CACHE")
    os.environ["SPOTIT_CACHE"] = cache
    yield Path(cache)
    if old is None:
        os.environ.pop("SPOTIT_CACHE", None)
    else:
        os.environ["SPOTIT_CACHE"] = old


@pytest.fixture(autouse=True)
def no_default_index(tmp_path, monkeypatch):
    """No test may touch the user's real default index."""
    monkeypatch.setenv("SPOTIT_INDEX", str(tmp_path / "default-index"))


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """A 20-photo gallery made from real photos with pasted objects, and its boxed query."""
    from spotit.demo import make_demo

    return make_demo(tmp_path_factory.mktemp("demo"), seed=0)


@pytest.fixture(scope="session")
def demo_index(demo, tmp_path_factory):
    """The demo gallery indexed for every method (shared: tests must not modify it)."""
    from spotit import Index

    index = Index.create(tmp_path_factory.mktemp("demo-index") / "index", demo["gallery"], ["cnn", "hybrid", "sift"])
    index.update(progress=False)
    return index


@pytest.fixture
def gallery_copy(demo, tmp_path):
    """A private copy of the demo gallery that a test may change."""
    target = tmp_path / "gallery"
    shutil.copytree(demo["gallery"], target)
    return target


@pytest.fixture
def noise_image():
    """Writes a random-noise image: noise_image(path, seed=0, size=(h, w))."""

    def write(path: Path, seed: int = 0, size=(96, 128)) -> Path:
        rng = np.random.default_rng(seed)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
        return path

    return write


def edit_state(index_dir, edit):
    """Change an index's committed settings in place, as another program or version could have left them."""
    from spotit.storage.catalogue import Catalogue, Images

    catalogue = Catalogue(index_dir)
    state = catalogue.state()
    edit(state)
    catalogue.commit(state, Images())


SHARED_DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def dev_index(tmp_path_factory):
    """dev_index(name) -> (dataset, its hybrid index), built once per session; skips where the set is absent."""
    from spotit import Index
    from spotit.evaluation.datasets import load_dataset

    built = {}

    def get(name: str):
        root = SHARED_DATASETS / name
        if not root.is_dir():
            pytest.skip(f"{root} is absent")
        if name not in built:
            dataset = load_dataset(root)
            index = Index.create(tmp_path_factory.mktemp(name) / "index", dataset.gallery, ["hybrid"])
            index.update(progress=False)
            built[name] = dataset, index
        return built[name]

    return get


@pytest.fixture
def serve():
    """Runs an ASGI app on a real uvicorn server on 127.0.0.1 in a thread: serve(app) -> its base URL."""
    import socket
    import threading

    import uvicorn

    running = []

    def start(app) -> str:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        running.append((server, thread))
        for _ in range(300):
            if server.started:
                return f"http://127.0.0.1:{sock.getsockname()[1]}"
            time.sleep(0.05)
        raise RuntimeError("the test server did not start")

    yield start
    for server, thread in running:
        server.should_exit = True
        thread.join(30)


@pytest.fixture
def served_copy(demo_index, demo, tmp_path):
    """A private copy of the demo index and gallery (a test may update it), re-pointed to the copy."""
    from spotit import Index

    gallery = tmp_path / "gallery"
    shutil.copytree(demo["gallery"], gallery)
    index_dir = tmp_path / "index"
    shutil.copytree(demo_index.store.root, index_dir, ignore=shutil.ignore_patterns("write.lock"))
    return Index.open_or_create(index_dir, gallery, demo_index.methods_built, moved=True)
