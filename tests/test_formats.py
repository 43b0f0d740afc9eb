"""What phones and cameras write (HEIC, AVIF, camera RAW), upright; and what a library holds beside its photos."""

import io
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile
from PIL import Image

from spotit import Index
from spotit import raw as raw_module
from spotit.cli import main
from spotit.images import ImageError, decode_image, load_image, scan_images

ORIENTATION = 0x0112


def banded(width=80, height=40) -> np.ndarray:
    """A landscape picture whose left quarter is red: where it ends up tells the orientation."""
    picture = np.full((height, width, 3), 40, np.uint8)
    picture[:, : width // 4] = (250, 0, 0)
    return picture


def exif(orientation: int) -> bytes:
    tags = Image.Exif()
    tags[ORIENTATION] = orientation
    return tags.tobytes()


def write_dng(path, rgb: np.ndarray, flip: int = 1) -> None:
    """A minimal linear (demosaiced) DNG, as DNG converters write them; `flip` is its TIFF orientation."""
    tifffile.imwrite(path, rgb.astype(np.uint16) * 257, photometric=34892,  # LinearRaw
                     extratags=[(50706, "B", 4, (1, 4, 0, 0), True),  # DNGVersion
                                (50708, "s", 0, "spotit test camera", True), (274, "H", 1, flip, True)])


@pytest.mark.parametrize("extension", ["heic", "avif"])
def test_phone_formats_decode_upright(tmp_path, extension):
    path = tmp_path / f"photo.{extension}"
    Image.fromarray(banded()).save(path, exif=exif(6), quality=95)  # 6: turn 90 degrees clockwise to view
    photo = load_image(path)
    assert photo.shape == (80, 40, 3)
    assert photo[2, 20, 0] > 200 and photo[-2, 20, 0] < 100  # the red band is now on top
    assert np.array_equal(decode_image(path.read_bytes(), path.name), photo)


def test_a_camera_raw_is_demosaiced_upright_without_a_preview(tmp_path):
    path = tmp_path / "IMG_0001.dng"
    write_dng(path, banded(), flip=6)
    photo = load_image(path)
    assert photo.shape == (80, 40, 3)
    top, bottom = photo[2, 20].astype(int), photo[-2, 20].astype(int)
    assert top[0] > top[1] + 60 and abs(bottom[0] - bottom[1]) < 30  # red on top, grey below


def fake_raw(preview: Image.Image | None, width: int, height: int, flip: int, preview_exif: bytes = b""):
    """What rawpy.imread gives, as far as raw.py reads it."""
    data = io.BytesIO()
    if preview is not None:
        preview.save(data, "JPEG", quality=95, exif=preview_exif)
    rawpy = pytest.importorskip("rawpy")

    def extract_thumb():
        if preview is None:
            raise rawpy.LibRawNoThumbnailError()
        return SimpleNamespace(format=rawpy.ThumbFormat.JPEG, data=data.getvalue())
    return SimpleNamespace(sizes=SimpleNamespace(width=width, height=height, flip=flip), extract_thumb=extract_thumb,
                           postprocess=lambda **_: np.zeros((height, width, 3), np.uint8))


@pytest.mark.parametrize("flip, tagged", [(6, False), (0, True)])
def test_a_large_embedded_preview_is_used_upright_at_the_raws_size(flip, tagged):
    sensor = Image.fromarray(banded(1200, 800))  # as the sensor saw it: landscape
    fake = fake_raw(sensor, 2400, 1600, flip, exif(6) if tagged else b"")
    preview = raw_module._preview(fake)
    assert preview.shape == (1200, 800, 3) and preview[5, 400, 0] > 200 and preview[-5, 400, 0] < 100
    if not tagged:
        assert raw_module.raw_size(fake) == (1600, 2400)


def test_a_small_preview_is_not_used(monkeypatch):
    fake = fake_raw(Image.fromarray(banded(160, 120)), 2400, 1600, 0)
    assert raw_module._preview(fake) is None


def test_raw_size_is_checked_before_decoding_and_damage_is_one_line(tmp_path):
    path = tmp_path / "big.dng"
    write_dng(path, banded())
    with pytest.raises(ImageError, match="over the limit"):
        load_image(path, max_pixels=1000)
    damaged = tmp_path / "damaged.nef"
    damaged.write_bytes(b"not a raw file" * 100)
    with pytest.raises(ImageError, match="unreadable camera raw file"):
        load_image(damaged)


def library(root, demo, noise_image):
    """A photo library as phones, cameras and NAS boxes leave it."""
    photo = lambda name: Image.open(demo["gallery"] / f"{name}.jpg").convert("RGB")  # noqa: E731
    (root / "2024").mkdir(parents=True)
    photo("motorbike-1").save(root / "2024" / "beach.jpg")
    photo("cat-1").save(root / "2024" / "phone.heic", quality=90)
    photo("cat-1").save(root / "2024" / "phone-copy.avif", quality=90)
    write_dng(root / "camera.dng", np.asarray(photo("scene-3")))
    for junk in ["@eaDir/beach.jpg", "2024/@eaDir/SYNOPHOTO_THUMB_M.jpg", "._beach.jpg", ".thumbnails/a.jpg",
                 "#recycle/old.jpg", "$RECYCLE.BIN/old.jpg", "drafts/d.jpg"]:
        noise_image(root / junk, seed=9)
    return root


def test_an_index_of_a_real_library_takes_the_photos_and_says_what_it_left_out(tmp_path, demo, noise_image, capsys):
    gallery = library(tmp_path / "library", demo, noise_image)
    assert sorted(scan_images(gallery)[0]) == ["2024/beach.jpg", "2024/phone-copy.avif", "2024/phone.heic",
                                              "camera.dng", "drafts/d.jpg"]
    index_dir = tmp_path / "index"
    assert main(["index", str(gallery), "--index", str(index_dir), "--method", "cnn", "--exclude", "drafts"]) == 0
    out = capsys.readouterr().out
    assert "4 added" in out
    assert "2 folders (Synology thumbnails)" in out and "1 image files (AppleDouble files (macOS metadata))" in out
    assert "1 folders (--exclude drafts)" in out and "1 folders (NAS recycle bin)" in out
    index = Index.open(index_dir)
    assert index.manifest["exclude"] == ["drafts"] and not index.manifest["skipped"]
    best = index.search(gallery / "2024" / "phone.heic", top=2)
    assert {best[0].id, best[1].id} == {"2024/phone", "2024/phone-copy"}
    assert index.search(demo["gallery"] / "scene-3.jpg", top=1)[0].id == "camera"
    # given again, the globs replace the recorded ones: the drafts come in
    assert main(["index", str(gallery), "--index", str(index_dir), "--no-exclude", "--quiet"]) == 0
    assert len(Index.open(index_dir)) == 5


def test_path_globs_leave_out_one_folder_only(tmp_path, noise_image):
    for name in ["a/raw/x.jpg", "b/raw/y.jpg", "b/z.jpg"]:
        noise_image(tmp_path / name)
    found, _, left_out = scan_images(tmp_path, ["a/raw", "*.gif"])
    assert found == ["b/raw/y.jpg", "b/z.jpg"] and left_out == {"folders (--exclude a/raw)": 1}
