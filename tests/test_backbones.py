import urllib.error

import numpy as np
import pytest

from spotit import SpotitError
from spotit.cli import main
from spotit.features import backbones


@pytest.mark.slow
def test_onnx_feature_maps_match_pytorch(model_cache):
    import torch

    backbone = backbones.Backbone.load("efficientnet-lite0")
    model = backbones._torch_feature_model("efficientnet-lite0", backbones.default_weights("efficientnet-lite0"))
    rng = np.random.default_rng(0)
    for shape in [(2, 3, 224, 224), (1, 3, 320, 256)]:
        batch = rng.standard_normal(shape).astype(np.float32)
        with torch.no_grad():
            expected = model(torch.from_numpy(batch)).numpy()
        got = backbone.feature_maps(batch)
        assert got.shape == expected.shape == (shape[0], 1280, shape[2] // 32, shape[3] // 32)
        assert np.abs(got - expected).max() < 1e-3


def test_exported_model_is_cached_by_backbone_and_weights_hash(model_cache):
    backbone = backbones.Backbone.load("efficientnet-lite0")
    assert backbone.onnx_path.parent == model_cache / "models"
    assert backbone.onnx_path.name == f"efficientnet-lite0-{backbone.weights_sha256[:16]}.onnx"
    stamp = backbone.onnx_path.stat().st_mtime_ns
    assert backbones.Backbone.load("efficientnet-lite0").onnx_path.stat().st_mtime_ns == stamp  # not re-exported


def test_resnet18_without_weights_offline_names_both_ways(monkeypatch, tmp_path):
    import torch.hub

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(SpotitError, match="torch.hub.*--weights FILE"):
        backbones.default_weights("resnet18")


def test_weights_file_of_another_network_is_refused(tmp_path):
    import torch

    torch.save({"not": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(SpotitError, match="does not hold resnet18 weights"):
        backbones.Backbone.load("resnet18", tmp_path / "wrong.pth")


@pytest.mark.slow
def test_resnet18_with_a_weights_file_indexes_and_searches(demo, tmp_path, capsys):
    import torch

    from spotit.features.backbones.resnet import ResNet18

    torch.manual_seed(0)
    weights = tmp_path / "resnet18-random.pth"
    torch.save(ResNet18().state_dict(), weights)  # same keys as torchvision's file
    index = tmp_path / "idx"
    assert main(["index", str(demo["gallery"]), "--index", str(index), "--method", "cnn", "--backbone", "resnet18",
                 "--weights", str(weights), "--quiet"]) == 0
    assert "backbone resnet18" in capsys.readouterr().out
    assert main(["search", str(demo["gallery"] / "cat-2.jpg"), "--index", str(index), "--json", "--top", "1"]) == 0
    assert '"id": "cat-2"' in capsys.readouterr().out
