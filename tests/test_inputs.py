"""Every decodable image is loaded with its true content; everything else is skipped, fast, with a reason."""

import io
import os
import socket
import struct
import threading
import time
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFile

from spotit import images
from spotit.images import ImageError, as_image, assign_ids, image_id, list_images, load_image, scan_images

needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this system")
needs_unix_socket = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no UNIX sockets on this system")


def within(seconds, function, *args, **kwargs):
    """Run function on a thread: a call that blocks fails the test instead of hanging it."""
    outcome = {}

    def target():
        try:
            outcome["value"] = function(*args, **kwargs)
        except BaseException as exc:  # handed to the test below
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{function.__name__} still blocked after {seconds} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def gradient(height=32, width=64):
    """A smooth, non-trivial uint8 RGB image."""
    y, x = np.mgrid[:height, :width]
    return np.stack([x * 255 // (width - 1), y * 255 // (height - 1), (x + y) % 256], -1).astype(np.uint8)


# ---- bit depths ------------------------------------------------------------------------------------


def test_16_bit_grey_png_keeps_its_gradient(tmp_path):
    y, x = np.mgrid[:32, :256]
    grey = (x * 257 + y * 7).astype(np.uint16)  # the full 16-bit range, not multiples of 257
    Image.fromarray(grey).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I;16")
    loaded = load_image(tmp_path / "g16.png")
    assert loaded.shape == (32, 256, 3) and loaded.dtype == np.uint8
    assert loaded.std() > 50  # not blank
    assert np.abs(loaded[:, :, 0].astype(int) - np.round(grey / 257)).max() <= 1
    assert (loaded[:, :, 0] == loaded[:, :, 1]).all() and (loaded[:, :, 0] == loaded[:, :, 2]).all()


def test_16_bit_grey_tiff_written_by_opencv(tmp_path):
    grey = np.tile(np.linspace(0, 65535, 100).astype(np.uint16), (20, 1))
    cv2.imwrite(str(tmp_path / "g16.tif"), grey)
    loaded = load_image(tmp_path / "g16.tif")
    assert np.abs(loaded[:, :, 1].astype(int) - np.round(grey / 257)).max() <= 1


def test_32_bit_float_tiff_in_unit_range_is_scaled_by_255(tmp_path):
    values = np.tile(np.linspace(0, 1, 50, dtype=np.float32), (16, 1))
    Image.fromarray(values).save(tmp_path / "f.tif")
    assert Image.open(tmp_path / "f.tif").mode == "F"
    loaded = load_image(tmp_path / "f.tif")
    assert np.abs(loaded[:, :, 0].astype(int) - np.round(values * 255)).max() <= 1
    assert loaded[0, 0, 0] == 0 and loaded[0, -1, 0] == 255


def test_float_and_int32_outside_8_bits_are_stretched_not_clipped(tmp_path):
    values = np.tile(np.linspace(1000, 3000, 50, dtype=np.float32), (16, 1))  # all > 255: clipping gives white
    Image.fromarray(values).save(tmp_path / "f.tif")
    loaded = load_image(tmp_path / "f.tif")[:, :, 0]
    assert loaded[0, 0] == 0 and loaded[0, -1] == 255 and np.all(np.diff(loaded[0].astype(int)) >= 0)
    signed = np.tile(np.linspace(-100_000, 100_000, 50).astype(np.int32), (16, 1))
    Image.fromarray(signed, mode="I").save(tmp_path / "i.tif")
    loaded = load_image(tmp_path / "i.tif")[:, :, 0]
    assert loaded[0, 0] == 0 and loaded[0, -1] == 255 and abs(int(loaded[0, 25]) - 130) <= 2


def test_8_bit_grey_and_1_bit(tmp_path):
    grey = gradient()[:, :, 0]
    Image.fromarray(grey).save(tmp_path / "l.png")
    assert np.array_equal(load_image(tmp_path / "l.png"), np.stack([grey] * 3, -1))
    bits = np.zeros((16, 24), bool)
    bits[:, 12:] = True
    Image.fromarray(bits).save(tmp_path / "one.png")
    assert Image.open(tmp_path / "one.png").mode == "1"
    loaded = load_image(tmp_path / "one.png")
    assert (loaded[:, :12] == 0).all() and (loaded[:, 12:] == 255).all()


# ---- alpha, palettes, colour spaces ----------------------------------------------------------------


def test_palette_png_with_transparent_index_shows_white_there(tmp_path):
    indices = np.zeros((16, 16), np.uint8)
    indices[:, 8:] = 1
    image = Image.fromarray(indices, mode="P")
    image.putpalette([0, 0, 0, 200, 30, 10] + [0] * 762)  # index 0 is black, but transparent
    image.save(tmp_path / "p.png", transparency=0)
    loaded = load_image(tmp_path / "p.png")
    assert (loaded[:, :8] == 255).all()
    assert (loaded[:, 8:] == [200, 30, 10]).all()


def test_rgba_is_composited_over_white(tmp_path):
    pixels = np.zeros((16, 16, 4), np.uint8)  # transparent black
    pixels[:, 4:8] = [0, 0, 0, 128]  # half-transparent black
    pixels[:, 8:] = [10, 100, 200, 255]  # opaque
    Image.fromarray(pixels, "RGBA").save(tmp_path / "a.png")
    loaded = load_image(tmp_path / "a.png")
    assert (loaded[:, :4] == 255).all()
    assert (np.abs(loaded[:, 4:8].astype(int) - 127) <= 1).all()
    assert (loaded[:, 8:] == [10, 100, 200]).all()


def test_grey_with_alpha_is_composited_over_white(tmp_path):
    pixels = np.zeros((16, 16, 2), np.uint8)
    pixels[:, :8] = [0, 128]
    pixels[:, 8:] = [60, 255]
    Image.fromarray(pixels, "LA").save(tmp_path / "la.png")
    assert Image.open(tmp_path / "la.png").mode == "LA"
    loaded = load_image(tmp_path / "la.png")
    assert (np.abs(loaded[:, :8].astype(int) - 127) <= 1).all()
    assert (loaded[:, 8:] == 60).all()


def test_cmyk_is_converted_to_rgb(tmp_path):
    exact = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red ink-wise
    exact.save(tmp_path / "red.tif")
    assert (load_image(tmp_path / "red.tif") == [255, 0, 0]).all()
    rgb = gradient()
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    loaded = load_image(tmp_path / "c.jpg")
    assert np.abs(loaded.astype(int) - np.asarray(Image.open(tmp_path / "c.jpg").convert("RGB"))).max() <= 1
    assert np.abs(loaded.astype(int) - rgb).mean() < 8  # roughly the original colours


def test_first_frame_of_animated_gif_and_multipage_tiff(tmp_path):
    red = Image.new("RGB", (16, 16), (255, 0, 0))
    blue = Image.new("RGB", (16, 16), (0, 0, 255))
    red.save(tmp_path / "two.gif", save_all=True, append_images=[blue], duration=100)
    red.save(tmp_path / "two.tif", save_all=True, append_images=[blue])
    assert Image.open(tmp_path / "two.gif").n_frames == 2 and Image.open(tmp_path / "two.tif").n_frames == 2
    for name in ("two.gif", "two.tif"):
        assert (load_image(tmp_path / name) == [255, 0, 0]).all(), name


def test_exif_rotated_jpeg_is_upright(tmp_path):
    pixels = np.zeros((40, 80, 3), np.uint8)
    pixels[:, :40] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 90 degrees counter-clockwise to display
    Image.fromarray(pixels).save(tmp_path / "r.jpg", exif=exif, quality=100)
    upright = load_image(tmp_path / "r.jpg")
    assert upright.shape == (80, 40, 3)
    assert upright[40:].mean() > 200 and upright[:40].mean() < 50  # the white half is now at the bottom


# ---- the OpenCV fallback ---------------------------------------------------------------------------


def test_float_rgb_tiff_that_pillow_cannot_read_is_decoded_by_opencv(tmp_path):
    rgb = gradient().astype(np.float32) / 255
    cv2.imwrite(str(tmp_path / "f3.tif"), rgb[:, :, ::-1])  # OpenCV writes BGR
    with pytest.raises(Image.UnidentifiedImageError):
        Image.open(tmp_path / "f3.tif")
    loaded = load_image(tmp_path / "f3.tif")
    assert np.abs(loaded.astype(int) - gradient()).max() <= 1  # in RGB order, scaled by 255


def test_opencv_takes_over_when_pillow_fails(tmp_path, monkeypatch):
    rgba = np.zeros((16, 24, 4), np.uint8)
    rgba[..., :3] = gradient(16, 24)
    rgba[..., 3] = 255
    rgba[:, :6, 3] = 0  # transparent columns
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    Image.fromarray(gradient()).save(tmp_path / "g.png")

    def refuse(*args, **kwargs):
        raise Image.UnidentifiedImageError("cannot identify")

    monkeypatch.setattr(images.Image, "open", refuse)
    assert np.array_equal(load_image(tmp_path / "g.png"), gradient())
    loaded = load_image(tmp_path / "a.png")
    assert (loaded[:, :6] == 255).all() and np.array_equal(loaded[:, 6:], rgba[:, 6:, :3])
    (tmp_path / "junk.png").write_bytes(b"\x89PNG but not really" * 10)
    with pytest.raises(ImageError, match="junk.png: not an image"):
        load_image(tmp_path / "junk.png")


def test_truncated_png_is_refused_not_half_grey(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (100, 100, 3), dtype=np.uint8)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="cut.png: truncated"):
        load_image(tmp_path / "cut.png")


def damaged(data: bytes, seed: int) -> bytes:
    """`data` with random bytes over a sixth of it past the headers."""
    garbled, sixth = bytearray(data), len(data) // 6
    garbled[sixth: 2 * sixth] = np.random.default_rng(seed).integers(0, 256, sixth, dtype=np.uint8).tobytes()
    return bytes(garbled)


def pillow_refuses(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
    except OSError:
        return True
    return False


@pytest.mark.parametrize("kind", ["JPEG", "MPO"])  # MPO: a JPEG holding more pictures, as phones write them
def test_a_jpeg_with_damaged_data_is_refused_without_noise_on_stderr(tmp_path, capfd, kind):
    rng = np.random.default_rng(0)
    frames = [Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)) for _ in range(2)]
    buffer = io.BytesIO()
    frames[0].save(buffer, kind, quality=90, **({"save_all": True, "append_images": frames[1:]} if kind == "MPO" else {}))
    data = buffer.getvalue()
    # damage that Pillow's libjpeg gives up on (some garbles it decodes as noise, like any JPEG reader)
    garbled = next(g for g in (damaged(data, seed) for seed in range(50)) if pillow_refuses(g))
    (tmp_path / "garbled.jpg").write_bytes(garbled)
    with pytest.raises(ImageError, match=r"garbled.jpg: damaged JPEG data \("):
        load_image(tmp_path / "garbled.jpg")
    assert capfd.readouterr().err == ""  # OpenCV's libjpeg would have printed "Corrupt JPEG data" here
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"cut.jpg: truncated \(the file ends before the image does\)$"):
        load_image(tmp_path / "cut.jpg")


# ---- the pixel limit -------------------------------------------------------------------------------


def png_claiming(width, height):
    """A tiny PNG whose header claims width x height 1-bit pixels (its data is a few bytes)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_pixel_limit_refuses_from_the_header_without_decoding(tmp_path, monkeypatch):
    Image.fromarray(gradient(10, 20)).save(tmp_path / "small.png")  # 200 pixels
    decoded = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(1) or real_load(self))
    monkeypatch.setattr(images.cv2, "imdecode", lambda *a: pytest.fail("OpenCV must not decode it either"))
    with pytest.raises(ImageError, match=r"small.png: 20x10 pixels \(0.0002 MP\) is over the limit of 0.000199 MP"):
        load_image(tmp_path / "small.png", max_pixels=199)
    assert decoded == []
    assert load_image(tmp_path / "small.png", max_pixels=200).shape == (10, 20, 3)
    assert load_image(tmp_path / "small.png", max_pixels=None).shape == (10, 20, 3)
    assert decoded  # the patch does see decoding when it happens


def test_default_limit_names_the_size_and_how_to_raise_it(tmp_path):
    (tmp_path / "huge.png").write_bytes(png_claiming(30000, 30000))
    start = time.perf_counter()
    with pytest.raises(ImageError, match=r"30000x30000 pixels \(900 MP\) is over the limit of .* MP; raise it with --max-pixels"):
        load_image(tmp_path / "huge.png")
    assert time.perf_counter() - start < 1
    assert images.DEFAULT_MAX_PIXELS >= 200_000_000


def test_pillows_own_bomb_check_does_not_fire_under_our_limit(tmp_path):
    # 20000x10000 is over twice Pillow's default limit, where Pillow raises DecompressionBombError
    (tmp_path / "big.png").write_bytes(png_claiming(20000, 10000))
    with pytest.raises(ImageError) as caught:
        load_image(tmp_path / "big.png", max_pixels=300_000_000)
    assert "truncated" in str(caught.value) or "broken" in str(caught.value)  # got as far as decoding
    assert "limit" not in str(caught.value) and "large" not in str(caught.value)


def test_tiff_that_only_opencv_reads_is_limited_from_its_header(tmp_path, monkeypatch):
    cv2.imwrite(str(tmp_path / "f3.tif"), np.zeros((10, 20, 3), np.float32))
    monkeypatch.setattr(images.cv2, "imdecode", lambda *a: pytest.fail("decoded before the limit was checked"))
    with pytest.raises(ImageError, match="20x10 pixels .* over the limit"):
        load_image(tmp_path / "f3.tif", max_pixels=199)


def test_as_image_passes_the_limit_on(tmp_path):
    Image.fromarray(gradient(10, 20)).save(tmp_path / "small.png")
    with pytest.raises(ImageError, match="over the limit"):
        as_image(tmp_path / "small.png", max_pixels=100)
    assert as_image(str(tmp_path / "small.png"), max_pixels=None).shape == (10, 20, 3)


# ---- files that are no images: never block, always say why -----------------------------------------


@pytest.fixture
def odd_gallery(tmp_path, noise_image, monkeypatch):
    """A gallery with real images beside a fifo, a socket, symlink loops and a broken symlink."""
    gallery = tmp_path / "gallery"
    (gallery / "sub").mkdir(parents=True)
    noise_image(gallery / "real.jpg")
    noise_image(gallery / "sub" / "deep.png")
    (gallery / "linked.jpg").symlink_to(gallery / "real.jpg")
    (gallery / "loop1.jpg").symlink_to(gallery / "loop2.jpg")
    (gallery / "loop2.jpg").symlink_to(gallery / "loop1.jpg")
    (gallery / "broken.jpg").symlink_to(gallery / "missing.jpg")
    (gallery / "sub" / "up").symlink_to(gallery, target_is_directory=True)  # a folder loop
    if hasattr(os, "mkfifo"):
        os.mkfifo(gallery / "pipe.jpg")
    if hasattr(socket, "AF_UNIX"):
        monkeypatch.chdir(gallery / "sub")  # a short relative address: socket paths are limited to ~100 bytes
        server = socket.socket(socket.AF_UNIX)
        server.bind("s.png")
        yield gallery
        server.close()
    else:
        yield gallery


def test_scan_reports_what_it_skips_without_blocking(odd_gallery):
    found, skipped, _ = within(5, scan_images, odd_gallery)
    assert found == ["linked.jpg", "real.jpg", "sub/deep.png"]  # no sub/up/...: the folder loop is not followed
    reasons = dict(skipped)
    assert reasons["loop1.jpg"] == reasons["loop2.jpg"] == "symlink loop"
    assert reasons["broken.jpg"].startswith("broken symlink")
    if hasattr(os, "mkfifo"):
        assert reasons["pipe.jpg"] == "not a regular file (fifo)"
    if hasattr(socket, "AF_UNIX"):
        assert reasons["sub/s.png"] == "not a regular file (socket)"
    assert within(5, list_images, odd_gallery) == found


@needs_fifo
def test_load_image_refuses_a_fifo_at_once(odd_gallery):
    with pytest.raises(ImageError, match=r"pipe.jpg: not a regular file \(fifo\)"):
        within(5, load_image, odd_gallery / "pipe.jpg")


@needs_fifo
def test_a_file_that_became_a_fifo_after_the_check_still_does_not_block(odd_gallery, monkeypatch):
    monkeypatch.setattr(images, "file_problem", lambda path: None)  # as if it was a file when checked
    with pytest.raises(ImageError, match=r"not a regular file \(fifo\)"):
        within(5, load_image, odd_gallery / "pipe.jpg")


@needs_unix_socket
def test_load_image_refuses_a_socket(odd_gallery):
    with pytest.raises(ImageError, match=r"s.png: not a regular file \(socket\)"):
        within(5, load_image, odd_gallery / "sub" / "s.png")


def test_load_image_names_symlink_problems(odd_gallery):
    with pytest.raises(ImageError, match="loop1.jpg: symlink loop"):
        load_image(odd_gallery / "loop1.jpg")
    with pytest.raises(ImageError, match="broken.jpg: broken symlink"):
        load_image(odd_gallery / "broken.jpg")
    with pytest.raises(ImageError, match="nothing.jpg: no such file"):
        load_image(odd_gallery / "nothing.jpg")
    with pytest.raises(ImageError, match=r"sub: not a regular file \(folder\)"):
        load_image(odd_gallery / "sub")
    assert np.array_equal(load_image(odd_gallery / "linked.jpg"), load_image(odd_gallery / "real.jpg"))


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="needs a user that permissions stop")
def test_scan_reports_an_unreadable_folder(tmp_path, noise_image):
    (tmp_path / "locked").mkdir()
    noise_image(tmp_path / "locked" / "x.jpg")
    noise_image(tmp_path / "open.jpg")
    (tmp_path / "locked").chmod(0)
    try:
        found, skipped, _ = scan_images(tmp_path)
    finally:
        (tmp_path / "locked").chmod(0o755)
    assert found == ["open.jpg"]
    assert skipped == [("locked", "unreadable folder (permission denied)")]


def test_scan_reports_an_unreadable_folder_even_as_root(tmp_path, noise_image, monkeypatch):
    (tmp_path / "locked").mkdir()
    noise_image(tmp_path / "locked" / "x.jpg")
    noise_image(tmp_path / "open.jpg")
    real_scandir = os.scandir

    def scandir(path="."):
        if os.path.basename(path) == "locked":
            raise PermissionError(13, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)  # what os.walk lists folders with
    assert scan_images(tmp_path)[:2] == (["open.jpg"], [("locked", "unreadable folder (permission denied)")])


# ---- ids ---------------------------------------------------------------------------------------------


def test_assign_ids_keeps_extensions_only_where_names_collide():
    paths = ["photo.jpg", "photo.png", "other.jpg", "sub/photo.jpg"]
    assert assign_ids(paths) == ["photo.jpg", "photo.png", "other", "sub/photo"]
    assert assign_ids(["b.png", "a.jpg"]) == [image_id("b.png"), image_id("a.jpg")] == ["b", "a"]


def test_assign_ids_are_unique_even_for_doubled_extensions():
    paths = ["a.jpg", "a.png", "a.jpg.png", "b.tif", "b.tif.jpg", "c.jpeg", "C.jpg", "d/e.png", "d.e.png"]
    ids = assign_ids(paths)
    assert len(set(ids)) == len(paths)
    assert ids == ["a.jpg", "a.png", "a.jpg.png", "b", "b.tif.jpg", "c", "C", "d/e", "d.e"]
