import numpy as np
import pytest
from PIL import Image

from spotit.errors import SpotitError
from spotit.images import check_box, crop, list_images, load_image, parse_box, read_box_file


@pytest.mark.parametrize("text, box", [("10,20,30,40", (10, 20, 30, 40)), ("10 20 30 40", (10, 20, 30, 40)), (" 1.6, 2, 3, 4 ", (2, 2, 3, 4))])
def test_parse_box_accepts_commas_spaces_and_decimals(text, box):
    assert parse_box(text) == box


@pytest.mark.parametrize("text", ["10,20,30", "a,b,c,d", "1,2,3,4,5", "", "nan,1,2,3"])
def test_parse_box_refuses_malformed_boxes_with_reason(text):
    with pytest.raises(SpotitError, match="box"):
        parse_box(text)


def test_check_box_refuses_zero_size_and_outside():
    with pytest.raises(SpotitError, match="zero or negative size"):
        check_box((10, 10, 0, 5), 100, 100)
    with pytest.raises(SpotitError, match="outside the 100x80 image"):
        check_box((150, 10, 20, 20), 100, 80)
    with pytest.raises(SpotitError, match="mostly outside"):
        check_box((90, 70, 40, 40), 100, 80)


def test_check_box_clips_a_box_that_sticks_out_slightly():
    assert check_box((-2, 5, 50, 50), 100, 100) == (0, 5, 48, 50)


def test_crop_takes_the_box_region():
    image = np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3)
    assert np.array_equal(crop(image, (5, 2, 10, 4)), image[2:6, 5:15])


def test_read_box_file_reports_line_of_bad_box(tmp_path):
    good = tmp_path / "q.txt"
    good.write_text("1 2 3 4\n\n5 6 7 8\n")
    assert read_box_file(good) == [(1, 2, 3, 4), (5, 6, 7, 8)]
    bad = tmp_path / "bad.txt"
    bad.write_text("1 2 3 4\n1 2 x 4\n")
    with pytest.raises(SpotitError, match="line 2"):
        read_box_file(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(SpotitError, match="no box"):
        read_box_file(empty)


def test_list_images_is_recursive_and_filters_extensions(tmp_path, noise_image):
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    for name in ["a.jpg", "b.PNG", "sub/c.webp", "sub/deeper/d.tif", "sub/e.bmp", "f.jpeg"]:
        noise_image(tmp_path / name)
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / ".hidden.jpg").write_text("x")
    assert list_images(tmp_path) == ["a.jpg", "b.PNG", "f.jpeg", "sub/c.webp", "sub/deeper/d.tif", "sub/e.bmp"]


def test_load_image_refuses_truncated_and_non_images(tmp_path, noise_image):
    full = noise_image(tmp_path / "full.jpg", size=(200, 200))
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(full.read_bytes()[: 600])
    text = tmp_path / "fake.jpg"
    text.write_text("not a picture")
    with pytest.raises(SpotitError, match="truncated"):
        load_image(truncated)
    with pytest.raises(SpotitError, match="not an image"):
        load_image(text)
    assert load_image(full).shape == (200, 200, 3)


def test_load_image_honours_exif_orientation(tmp_path):
    pixels = np.zeros((40, 80, 3), np.uint8)
    pixels[:, :40] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(pixels).save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    upright = load_image(tmp_path / "rotated.jpg")
    assert upright.shape[:2] == (80, 40)
    assert upright[:40].mean() > 200 and upright[40:].mean() < 50  # the white half is now on top


def test_a_big_jpeg_decodes_smaller_only_as_far_as_asked(tmp_path):
    path = tmp_path / "big.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1200, 1600, 3), np.uint8)).save(path)
    assert load_image(path).shape == (1200, 1600, 3)
    assert load_image(path, at_least=300).shape == (300, 400, 3)  # 1/4: both sides keep >= 300
    assert load_image(path, at_least=301).shape == (600, 800, 3)
    png = tmp_path / "big.png"
    Image.open(path).save(png)
    assert load_image(png, at_least=300).shape == (1200, 1600, 3)  # only JPEG decodes at a smaller scale
