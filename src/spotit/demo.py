"""Built-in demo data: real photos with objects pasted into other photos, and a boxed query.

The photos are the public-domain / CC0 sample images that ship inside scikit-image (read from its
installed files, so nothing is downloaded). Objects are cut from some photos and pasted into others at
other places, sizes and angles; the query is the object's original photo with a box around it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from .errors import SpotitError
from .images import Box

# name: (photo, box of the object in it)
OBJECTS = {
    "cup": ("coffee.png", (30, 0, 460, 390)),
    "cat": ("chelsea.png", (130, 0, 280, 260)),
    "motorbike": ("motorcycle_left.png", (110, 110, 590, 370)),
    "astronaut": ("astronaut.png", (120, 0, 250, 330)),
}
SCENES = ["grass.png", "gravel.png", "brick.png", "hubble_deep_field.jpg", "ihc.png", "rocket.jpg", "camera.png", "retina.jpg"]
QUERY_OBJECT = "cup"
COPIES = 3  # pasted copies of each object in the gallery


def photo_folder() -> Path:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise SpotitError("the demo photos come with scikit-image; install it with `pip install scikit-image`")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def load_photo(name: str) -> Image.Image:
    path = photo_folder() / name
    if not path.is_file():
        raise SpotitError(f"demo photo {path} is missing from the scikit-image install")
    with Image.open(path) as image:
        return image.convert("RGB")


def paste(scene: Image.Image, obj: Image.Image, rng: np.random.Generator, area: float, angle: float) -> tuple[Image.Image, Box]:
    """Paste obj, rotated by angle and scaled to `area` of the scene, at a random place; returns the bounding box."""
    scene = scene.copy()
    mask = Image.new("L", obj.size, 255).rotate(angle, expand=True, resample=Image.BILINEAR)
    rotated = obj.rotate(angle, expand=True, resample=Image.BICUBIC)
    scale = np.sqrt(area * scene.width * scene.height / (obj.width * obj.height))
    size = (max(8, round(rotated.width * scale)), max(8, round(rotated.height * scale)))
    size = (min(size[0], scene.width), min(size[1], scene.height))
    rotated, mask = rotated.resize(size, Image.BICUBIC), mask.resize(size, Image.BILINEAR)
    rotated = ImageEnhance.Brightness(rotated).enhance(rng.uniform(0.75, 1.25))
    x = int(rng.integers(0, scene.width - size[0] + 1))
    y = int(rng.integers(0, scene.height - size[1] + 1))
    scene.paste(rotated, (x, y), mask)
    return scene, (x, y, size[0], size[1])


DEMO_MARKER = "spotit-demo.txt"  # a later run may overwrite only a folder that bears it


def make_demo(out: str | Path, seed: int = 0) -> dict:
    """Write out/gallery/*.jpg, out/query.jpg and out/query.txt; returns what was made and where each object is."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / DEMO_MARKER).is_file())):
        raise SpotitError(f"{out} exists and is not a spotit demo folder; give a new folder with --out")
    gallery = out / "gallery"
    gallery.mkdir(parents=True, exist_ok=True)
    (out / DEMO_MARKER).write_text("made by `spotit demo`; running it again replaces this folder's demo files\n")
    rng = np.random.default_rng(seed)
    scenes = [load_photo(name) for name in SCENES]
    truth: dict[str, list[str]] = {}
    places: dict[str, Box] = {}
    for obj_name, (photo, (x, y, w, h)) in OBJECTS.items():
        obj = load_photo(photo).crop((x, y, x + w, y + h))
        for copy in range(COPIES):
            scene = scenes[int(rng.integers(len(scenes)))]
            angle = float(rng.choice([0, 0, 15, -20, 90, 180])) + float(rng.uniform(-5, 5))
            picture, box = paste(scene, obj, rng, area=float(rng.uniform(0.25, 0.45)), angle=angle)
            name = f"{obj_name}-{copy + 1}"
            picture.save(gallery / f"{name}.jpg", quality=90)
            truth.setdefault(obj_name, []).append(name)
            places[name] = box
    for number, scene in enumerate(scenes, 1):
        scene.save(gallery / f"scene-{number}.jpg", quality=90)
    photo, box = OBJECTS[QUERY_OBJECT]
    load_photo(photo).save(out / "query.jpg", quality=95)
    (out / "query.txt").write_text(" ".join(map(str, box)) + "\n")
    return {"gallery": gallery, "query": out / "query.jpg", "box": box, "relevant": truth[QUERY_OBJECT],
            "truth": truth, "places": places}
