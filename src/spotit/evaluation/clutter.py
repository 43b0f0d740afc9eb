"""`spotit bench make-clutter`: a boxed-query benchmark made by pasting object views into scene photos.

OBJECTS is a set in the plain layout whose ground truth groups views of one object (e.g. UKBench's
groups of four); SCENES is a folder of photos, or a plain-layout set whose groups are kept apart so
that no scene group appears both behind a query and in the gallery. For each object, one view is pasted
into a query scene (15-35% of its area, boxed); the other views go into gallery scenes at 6-25% of the
area with perspective warp, rotation (some up to 180 degrees), light changes and JPEG compression.
Distractor scenes fill the rest of the gallery, some with views of distractor objects pasted in. Output is the assignment
layout plus `groundtruth.json` and `placements.json` (where each object view lies in each gallery image).
Harder conditions (ClutterConfig.shared_scenes, .turned; `--hard`) share scenes between queries and
gallery, put each query's scene into the gallery without the object, and turn more views far.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from ..errors import SpotitError
from ..images import list_images, load_image

SCENE_SIDE = 800


@dataclass
class ClutterConfig:
    objects: int = 60
    distractor_scenes: int = 300
    distractor_objects: int = 60
    query_area: tuple[float, float] = (0.15, 0.35)
    gallery_area: tuple[float, float] = (0.06, 0.25)
    seed: int = 0
    # hard conditions: query and gallery scenes from one pool, and each query's scene also in the gallery
    # without the object (its background must not be a match); `turned` of the gallery views anywhere up to
    # 180 degrees and the rest up to 20 (None: mostly upright, see random_angle)
    shared_scenes: bool = False
    turned: float | None = None


def object_groups(root: Path) -> list[list[Path]]:
    """Views grouped by object from a plain-layout set's ground truth (connected query/relevant sets)."""
    truth_path = root / "groundtruth.json"
    if not (root / "images").is_dir() or not truth_path.is_file():
        raise SpotitError(f"OBJECTS must be a set with images/ and groundtruth.json: {root}")
    truth = json.loads(truth_path.read_text())
    parent: dict[str, str] = {}

    def find(x):
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for query, relevant in truth.items():
        for other in relevant:
            parent[find(other)] = find(query)
    groups: dict[str, list[str]] = {}
    for name in parent:
        groups.setdefault(find(name), []).append(name)
    return [sorted(root / "images" / n for n in members) for _, members in sorted(groups.items()) if len(members) >= 2]


def scene_groups(root: Path) -> list[list[Path]]:
    """Scene photos grouped so that photos of one place stay together (each photo alone without ground truth)."""
    folder = root / "images" if (root / "images").is_dir() else root
    names = list_images(folder)
    if not names:
        raise SpotitError(f"no scene photos in {folder}")
    truth_path = root / "groundtruth.json"
    group_of = {n: n for n in names}
    if truth_path.is_file():
        for query, relevant in json.loads(truth_path.read_text()).items():
            for other in relevant:
                group_of[other] = query
    groups: dict[str, list[Path]] = {}
    for name in names:
        groups.setdefault(group_of.get(name, name), []).append(folder / name)
    return list(groups.values())


def random_quad(rng: np.random.Generator, obj_w: int, obj_h: int, scene_w: int, scene_h: int, area: float,
                angle: float, warp: float) -> np.ndarray:
    """Corners (4, 2) of the pasted object in the scene: scaled to `area`, rotated, perspective-jittered, inside."""
    scale = np.sqrt(area * scene_w * scene_h / (obj_w * obj_h))
    w, h = obj_w * scale, obj_h * scale
    corners = np.array([[-w / 2, -h / 2], [w / 2, -h / 2], [w / 2, h / 2], [-w / 2, h / 2]])
    corners += rng.uniform(-warp, warp, corners.shape) * np.array([w, h])
    theta = np.deg2rad(angle)
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    corners = corners @ rotation.T
    span = corners.max(0) - corners.min(0)
    shrink = min(1.0, 0.98 * scene_w / span[0], 0.98 * scene_h / span[1])
    corners *= shrink
    low, high = -corners.min(0), np.array([scene_w, scene_h]) - corners.max(0)
    return (corners + rng.uniform(low, high)).astype(np.float32)


def paste_view(scene: np.ndarray, view: np.ndarray, quad: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Warp `view` onto `quad` of `scene` with a light change; returns the new scene."""
    h, w = view.shape[:2]
    source = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
    transform = cv2.getPerspectiveTransform(source, quad)
    size = (scene.shape[1], scene.shape[0])
    gain, bias = rng.uniform(0.6, 1.3), rng.uniform(-25, 25)
    lit = np.clip(view.astype(np.float32) * gain + bias, 0, 255)
    warped = cv2.warpPerspective(lit, transform, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    mask = cv2.warpPerspective(np.ones((h, w), np.float32), transform, size, flags=cv2.INTER_LINEAR)[..., None]
    return (scene * (1 - mask) + warped * mask).astype(np.uint8)


def bounding_box(quad: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    x0, y0 = np.floor(quad.min(0)).astype(int)
    x1, y1 = np.ceil(quad.max(0)).astype(int)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    return int(x0), int(y0), int(x1 - x0), int(y1 - y0)


def random_angle(rng: np.random.Generator) -> float:
    """Mostly near-upright, some tilted, one in five anywhere up to 180 degrees."""
    pick = rng.random()
    if pick < 0.5:
        return float(rng.uniform(-10, 10))
    if pick < 0.8:
        return float(rng.uniform(-45, 45))
    return float(rng.uniform(-180, 180))


def turned_angle(rng: np.random.Generator, turned: float) -> float:
    """A share `turned` of views anywhere up to 180 degrees, the others up to 20."""
    return float(rng.uniform(-180, 180)) if rng.random() < turned else float(rng.uniform(-20, 20))


def load_scene(path: Path, rng: np.random.Generator) -> np.ndarray:
    """A scene at about SCENE_SIDE px on its longest side, randomly mirrored so reused scenes differ."""
    image = load_image(path)
    scale = SCENE_SIDE / max(image.shape[:2])
    image = cv2.resize(image, (round(image.shape[1] * scale), round(image.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    return image[:, ::-1].copy() if rng.random() < 0.5 else image


def save_jpeg(path: Path, image: np.ndarray, quality: int) -> None:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise SpotitError(f"cannot encode {path}")
    path.write_bytes(data.tobytes())


def make_clutter(objects_root, scenes_root, out, config: ClutterConfig = ClutterConfig(), progress: bool = True) -> dict:
    """Write the benchmark into `out` (which must be empty or absent); returns a summary."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise SpotitError(f"{out} is not empty; choose a new folder")
    rng = np.random.default_rng(config.seed)
    groups = object_groups(Path(objects_root))
    needed = config.objects + config.distractor_objects
    if len(groups) < config.objects + 1:
        raise SpotitError(f"{objects_root} has {len(groups)} objects; {config.objects} were asked for")
    order = rng.permutation(len(groups))
    chosen = [groups[i] for i in order[: config.objects]]
    distractors = [groups[i] for i in order[config.objects : needed]]

    scenes = scene_groups(Path(scenes_root))
    scene_order = rng.permutation(len(scenes))
    if config.shared_scenes:
        query_scenes = gallery_scenes = [p for group in scenes for p in group]
    else:
        # scene groups behind queries never appear in the gallery, so the background cannot give a match away
        n_query_groups = max(1, min(len(scenes) // 5, config.objects))
        query_scenes = [p for i in scene_order[:n_query_groups] for p in scenes[i]]
        gallery_scenes = [p for i in scene_order[n_query_groups:] for p in scenes[i]]
    if not gallery_scenes:
        raise SpotitError(f"{scenes_root} has too few scene groups to keep query and gallery scenes apart")
    # a stream of its own, so that the default sets stay what they were for a seed
    hard = np.random.default_rng([config.seed, 1])
    query_scene_paths = [query_scenes[int(hard.integers(len(query_scenes)))] for _ in chosen] if config.shared_scenes else None

    for sub in ("gallery", "query", "query_txt"):
        (out / sub).mkdir(parents=True, exist_ok=True)

    # every gallery image: (scene path, [(view path, object key)]); names are shuffled at the end
    plan: list[tuple[Path, list[tuple[Path, str]]]] = []
    for number, views in enumerate(chosen):
        for view in views[1:]:
            plan.append((gallery_scenes[int(rng.integers(len(gallery_scenes)))], [(view, f"object-{number}")]))
    # distractor objects go into distractor scenes, one view each, as far as those scenes go
    distractor_views = [(view, f"distractor-{n}") for n, views in enumerate(distractors) for view in views[:2]]
    for number in range(config.distractor_scenes):
        scene = gallery_scenes[int(rng.integers(len(gallery_scenes)))]
        plan.append((scene, [distractor_views[number]] if number < len(distractor_views) else []))
    if query_scene_paths:  # the place of each query, photographed without the object
        plan += [(path, []) for path in query_scene_paths]
    names = [f"{i:06d}" for i in rng.permutation(len(plan))]

    truth: dict[str, list[str]] = {}
    placements: dict[str, list[dict]] = {}
    bar = tqdm(total=len(plan) + len(chosen), desc="make-clutter", unit="img", disable=not progress, dynamic_ncols=True)
    for name, (scene_path, views) in zip(names, plan):
        scene = load_scene(scene_path, rng)
        placements[name] = []
        for view_path, key in views:
            view = load_image(view_path)
            quad = random_quad(rng, view.shape[1], view.shape[0], scene.shape[1], scene.shape[0],
                               float(rng.uniform(*config.gallery_area)),
                               random_angle(rng) if config.turned is None else turned_angle(rng, config.turned), warp=0.12)
            scene = paste_view(scene, view, quad, rng)
            placements[name].append({"object": key, "view": view_path.name, "quad": quad.round(1).tolist(),
                                     "box": bounding_box(quad, scene.shape[1], scene.shape[0])})
            if key.startswith("object-"):
                truth.setdefault(key, []).append(name)
        save_jpeg(out / "gallery" / f"{name}.jpg", scene, int(rng.integers(60, 91)))
        bar.update()

    groundtruth = {}
    for number, views in enumerate(chosen):
        query_name = f"q{number:03d}"
        scene_path = query_scene_paths[number] if query_scene_paths else query_scenes[int(rng.integers(len(query_scenes)))]
        scene = load_scene(scene_path, rng)
        view = load_image(views[0])
        quad = random_quad(rng, view.shape[1], view.shape[0], scene.shape[1], scene.shape[0],
                           float(rng.uniform(*config.query_area)), float(rng.uniform(-10, 10)), warp=0.05)
        scene = paste_view(scene, view, quad, rng)
        save_jpeg(out / "query" / f"{query_name}.jpg", scene, 90)
        x, y, w, h = bounding_box(quad, scene.shape[1], scene.shape[0])
        (out / "query_txt" / f"{query_name}.txt").write_text(f"{x} {y} {w} {h}\n")
        groundtruth[f"{query_name}.jpg"] = [f"{n}.jpg" for n in sorted(truth[f'object-{number}'])]
        bar.update()
    bar.close()
    (out / "groundtruth.json").write_text(json.dumps(groundtruth, indent=1, sort_keys=True))
    (out / "placements.json").write_text(json.dumps(placements, indent=0, sort_keys=True))
    return {"out": out, "gallery": len(plan), "queries": len(chosen)}
