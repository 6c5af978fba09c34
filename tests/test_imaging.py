"""Tests for covid_xray.imaging: the generated bad/odd-input corpus, then specific behaviours."""

from __future__ import annotations

import io
import time
import tracemalloc

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageFile, ImageOps

from covid_xray import synthetic as corpus_module
from covid_xray.config import MIN_IMAGE_SIDE
from covid_xray.imaging import ImageDecodeError, is_probably_dicom, load_image
from covid_xray.synthetic import CorpusCase, build_corpus

# (name, expect, reason): the corpus's own expectations, restated here on purpose so that a
# change on either side is noticed.
CORPUS_TABLE = [
    # Zero-byte upload.
    ("empty", "error", "empty"),
    # Plain text renamed .png: content decides, not the name.
    ("text_as_png", "error", "not_an_image"),
    # Plain text renamed .dcm: the forced DICOM read must not accept it.
    ("text_as_dcm", "error", "not_an_image"),
    # JPEG cut at 60%: must raise, never be padded with grey.
    ("truncated_jpeg", "error", "truncated"),
    # PNG cut at 60%.
    ("truncated_png", "error", "truncated"),
    # 1x1 pixel: below MIN_IMAGE_SIDE.
    ("png_1x1", "error", "too_small"),
    # 8x8 icon: below MIN_IMAGE_SIDE.
    ("png_8x8", "error", "too_small"),
    # 235-byte PNG whose header claims 40000x40000: refused from the header.
    ("png_bomb_header", "error", "too_large"),
    # 16-bit greyscale PNG using 12 bits: min-max scaled, not black.
    ("png_gray16", "ok", None),
    # 16-bit greyscale TIFF.
    ("tiff_gray16", "ok", None),
    # RGBA with a transparent half: composited onto black.
    ("png_rgba", "ok", None),
    # Palette (P mode) PNG.
    ("png_palette", "ok", None),
    # CMYK JPEG.
    ("jpeg_cmyk", "ok", None),
    # Animated GIF: first frame.
    ("gif_animated", "ok", None),
    # EXIF orientation 6: output is transposed (portrait).
    ("jpeg_exif_rotated", "ok", None),
    # Negative X-ray: a valid image.
    ("png_negative", "ok", None),
    # 8-bit greyscale BMP.
    ("bmp", "ok", None),
    # Lossy WebP.
    ("webp", "ok", None),
    # Colour photo: decodes; deciding it is not an X-ray is not the decoder's job.
    ("photo_colour", "ok", None),
    # PNG content named .jpg.
    ("png_named_jpg", "ok", None),
    # DICOM MONOCHROME2, 8 bits.
    ("dicom_mono2_8bit", "ok", None),
    # DICOM MONOCHROME2, 12 of 16 bits, no window.
    ("dicom_mono2_16bit", "ok", None),
    # DICOM MONOCHROME1: inverted.
    ("dicom_mono1", "ok", None),
    # DICOM with WindowCenter/WindowWidth.
    ("dicom_window", "ok", None),
    # DICOM without preamble / "DICM" marker.
    ("dicom_no_preamble", "ok", None),
    # Multi-frame DICOM: first frame.
    ("dicom_multiframe", "ok", None),
    # DICOM content named .png.
    ("dicom_named_png", "ok", None),
    # DICOM header without Pixel Data.
    ("dicom_no_pixels", "error", "dicom_no_pixels"),
    # JPEG 2000 DICOM with garbage data.
    ("dicom_jpeg2000_garbage", "error", "dicom_unsupported"),
    # Uncompressed DICOM whose pixel data ends early.
    ("dicom_truncated_pixels", "error", "truncated"),
    # 6000x5000 JPEG: big but valid.
    ("jpeg_large_xray", "ok", None),
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, CorpusCase]:
    cases = build_corpus(tmp_path_factory.mktemp("corpus"))
    return {case.name: case for case in cases}


def _decode_stored_dicom(case: CorpusCase) -> np.ndarray:
    """The stored (raw) values of a corpus DICOM's first frame, read independently."""
    ds = pydicom.dcmread(case.path, force=True)
    pixels = ds.pixel_array
    return pixels[0] if int(ds.get("NumberOfFrames", 1) or 1) > 1 else pixels


# ---------------------------------------------------------------------------
# The corpus.
# ---------------------------------------------------------------------------
def test_corpus_matches_table(corpus):
    assert list(corpus) == [name for name, _, _ in CORPUS_TABLE]
    for name, expect, reason in CORPUS_TABLE:
        assert (corpus[name].expect, corpus[name].reason) == (expect, reason), name
        assert corpus[name].path.is_file() and corpus[name].note


def test_corpus_is_cheap_to_build(tmp_path):
    # Measured about 0.6 s; the bound only catches an accidental blow-up on a busy machine.
    start = time.perf_counter()
    build_corpus(tmp_path)
    assert time.perf_counter() - start < 10


@pytest.mark.parametrize(("name", "expect", "reason"), CORPUS_TABLE, ids=[row[0] for row in CORPUS_TABLE])
def test_corpus_case(corpus, name, expect, reason):
    case = corpus[name]
    if expect == "ok":
        rgb = load_image(case.path)
        assert rgb.dtype == np.uint8
        assert rgb.ndim == 3 and rgb.shape[2] == 3
        assert min(rgb.shape[:2]) >= MIN_IMAGE_SIDE
        assert rgb.flags.c_contiguous
    else:
        with pytest.raises(ImageDecodeError) as info:
            load_image(case.path)
        assert info.value.reason == reason
        message = str(info.value)
        # A sentence for a person, not a traceback fragment.
        assert message[0].isupper() and message.endswith(".") and len(message) > 30, message
        assert "Error" not in message and "<" not in message


# ---------------------------------------------------------------------------
# Pillow formats.
# ---------------------------------------------------------------------------
def test_exif_orientation_is_applied(corpus):
    rgb = load_image(corpus["jpeg_exif_rotated"].path)
    stored_h, stored_w = corpus_module.SMALL_HEIGHT, corpus_module.SMALL_WIDTH
    # Orientation 6 rotates the stored landscape image 90 degrees clockwise: portrait, and
    # the stored top-left bright square ends up top-right.
    assert rgb.shape == (stored_w, stored_h, 3)
    h, w = rgb.shape[:2]
    assert rgb[: h // 4, -w // 4 :].mean() > 200
    assert rgb[: h // 4, : w // 4].mean() < 60
    assert rgb[-h // 4 :, -w // 4 :].mean() < 60


@pytest.mark.parametrize("name", ["png_gray16", "tiff_gray16"])
def test_16bit_is_minmax_scaled(corpus, name):
    # The ramp 0..4095 must span 0..255; dividing by 65535 would leave it below 16.
    rgb = load_image(corpus[name].path)
    ramp = corpus_module.gray16_ramp(corpus_module.SMALL_HEIGHT, corpus_module.SMALL_WIDTH)
    expected = np.round(ramp.astype(np.float64) / 4095 * 255)
    assert np.abs(rgb[..., 0].astype(np.float64) - expected).max() <= 1
    assert rgb.min() == 0 and rgb.max() == 255 and 110 < rgb.mean() < 145


def test_16bit_narrow_range_is_stretched():
    values = np.tile(np.linspace(1000, 1100, 64).round().astype(np.uint16), (48, 1))
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, "PNG")
    rgb = load_image(buffer.getvalue())
    assert rgb[:, 0].max() == 0 and rgb[:, -1].min() == 255


@pytest.mark.parametrize(
    ("mode", "array", "expected_first", "expected_last"),
    [
        # 32-bit signed integers (negative values): min-max.
        ("I", np.tile(np.linspace(-1000, 3000, 40).astype(np.int32), (40, 1)), 0, 255),
        # 32-bit float with a NaN: NaN counts as the minimum.
        ("F", np.tile(np.r_[np.nan, np.linspace(0.0, 1.0, 39)].astype(np.float32), (40, 1)), 0, 255),
    ],
)
def test_wide_pillow_modes(mode, array, expected_first, expected_last):
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, "TIFF")
    rgb = load_image(buffer.getvalue())
    assert rgb.shape == (40, 40, 3)
    assert rgb[0, 0, 0] == expected_first and rgb[0, -1, 0] == expected_last


def test_rgba_is_composited_onto_black(corpus):
    rgb = load_image(corpus["png_rgba"].path)
    half = rgb.shape[1] // 2
    assert (rgb[:, :half] == 0).all()  # transparent -> black background
    assert (rgb[:, half:] == 200).all()  # opaque -> unchanged


def test_la_half_alpha_is_halved():
    la = np.zeros((40, 40, 2), np.uint8)
    la[..., 0], la[..., 1] = 200, 128
    buffer = io.BytesIO()
    Image.fromarray(la, "LA").save(buffer, "PNG")
    assert (load_image(buffer.getvalue()) == 100).all()  # 200 * 128 / 255 = 100.4


def test_palette_with_transparency_is_composited():
    img = Image.new("P", (40, 40), 1)
    img.putpalette([0, 0, 0, 250, 250, 250, 90, 90, 90] + [0] * (256 * 3 - 9))
    img.paste(2, (0, 0, 20, 40))
    buffer = io.BytesIO()
    img.save(buffer, "PNG", transparency=1)
    rgb = load_image(buffer.getvalue())
    assert (rgb[:, :20] == 90).all() and (rgb[:, 20:] == 0).all()


def test_one_bit_image():
    img = Image.new("1", (40, 40), 0)
    img.paste(1, (20, 0, 40, 40))
    buffer = io.BytesIO()
    img.save(buffer, "PNG")
    rgb = load_image(buffer.getvalue())
    assert (rgb[:, :20] == 0).all() and (rgb[:, 20:] == 255).all()


@pytest.mark.parametrize(("name", "tolerance"), [("jpeg_cmyk", 12), ("png_palette", 3), ("bmp", 0)])
def test_greyscale_content_survives_conversion(corpus, name, tolerance):
    original = corpus_module.xray_like(corpus_module.SMALL_HEIGHT, corpus_module.SMALL_WIDTH).astype(int)
    rgb = load_image(corpus[name].path).astype(int)
    # Mean error: CMYK JPEG is lossy; an uncorrected Adobe inversion would give about 130.
    assert np.abs(rgb - original[..., None]).mean() <= tolerance


def test_negative_is_kept_as_is(corpus):
    original = corpus_module.xray_like(corpus_module.SMALL_HEIGHT, corpus_module.SMALL_WIDTH)
    assert (load_image(corpus["png_negative"].path)[..., 0] == 255 - original).all()


def test_colour_photo_keeps_its_colours(corpus):
    rgb = load_image(corpus["photo_colour"].path).astype(int)
    assert (rgb.max(axis=2) - rgb.min(axis=2)).max() > 200


def test_animated_gif_gives_first_frame(corpus):
    assert (load_image(corpus["gif_animated"].path) == 40).all()


def test_misleading_extension_matches_true_format(corpus):
    # The .jpg holding a PNG decodes to exactly the PNG's pixels (lossless, so no JPEG path).
    original = corpus_module.xray_like(corpus_module.SMALL_HEIGHT, corpus_module.SMALL_WIDTH)
    assert (load_image(corpus["png_named_jpg"].path)[..., 1] == original).all()


# ---------------------------------------------------------------------------
# DICOM.
# ---------------------------------------------------------------------------
def test_dicom_8bit_monochrome2_keeps_stored_values(corpus):
    case = corpus["dicom_mono2_8bit"]
    rgb = load_image(case.path)
    stored = _decode_stored_dicom(case)
    assert (rgb[..., 0] == stored).all()
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()


def test_dicom_monochrome1_is_inverted(corpus):
    # MONOCHROME1 displays low values white; after inversion bones (stored dark) are white.
    case = corpus["dicom_mono1"]
    stored = _decode_stored_dicom(case)
    assert (load_image(case.path)[..., 0] == 255 - stored).all()


def test_dicom_16bit_without_window_is_minmax_scaled(corpus):
    case = corpus["dicom_mono2_16bit"]
    stored = _decode_stored_dicom(case).astype(np.float64)
    expected = np.round((stored - stored.min()) / (stored.max() - stored.min()) * 255)
    assert np.abs(load_image(case.path)[..., 0] - expected).max() <= 1


def test_dicom_window_is_applied(corpus):
    case = corpus["dicom_window"]
    stored = _decode_stored_dicom(case)
    gray = load_image(case.path)[..., 0]
    center, width = corpus_module.WINDOW_CENTER, corpus_module.WINDOW_WIDTH
    # DICOM linear window (PS3.3 C.11.2.1.2.1): black below centre - width/2, white above.
    assert (gray[stored <= center - width // 2] == 0).all()
    assert (gray[stored > center + width // 2] == 255).all()
    inside = (stored > center - width // 2 + 50) & (stored < center + width // 2 - 50)
    assert inside.any() and 0 < gray[inside].min() and gray[inside].max() < 255
    near_center = np.abs(stored.astype(int) - center) <= 20
    assert np.abs(gray[near_center].astype(int) - 128).max() <= 8
    # Without the window the same ramp would be scaled over its whole range instead.
    assert not np.array_equal(gray, load_image(corpus["dicom_mono2_16bit"].path)[..., 0])


def test_dicom_rescale_is_applied_before_window():
    # CT-style: stored 0..4095 with intercept -1024, so stored 1024 is 0 in modality units;
    # a window centred on 0 must put stored 1024 at mid-grey.
    ramp = corpus_module.gray16_ramp(40, 4096)
    data = corpus_module.dicom_bytes(
        ramp, bits_stored=12, RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=0, WindowWidth=400
    )
    gray = load_image(data)[0, :, 0].astype(int)
    assert gray[800] == 0 and gray[1300] == 255
    assert abs(gray[1024] - 128) <= 2


def test_dicom_voi_lut_sequence_is_applied():
    from pydicom.dataset import Dataset

    ramp = corpus_module.gray16_ramp(40, 256)
    data = corpus_module.dicom_bytes(ramp, bits_stored=12)
    ds = pydicom.dcmread(io.BytesIO(data))
    item = Dataset()
    # 4096 entries from stored value 0, 8-bit output: a gamma-like curve.
    item.LUTDescriptor = [4096, 0, 8]
    lut = np.round(255 * (np.arange(4096) / 4095) ** 0.5).astype(np.uint16)
    item["LUTData"] = pydicom.DataElement(0x00283006, "OW", lut.tobytes())
    ds.VOILUTSequence = [item]
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    gray = load_image(buffer.getvalue())[..., 0]
    assert (gray == lut[ramp]).all()


@pytest.mark.parametrize("syntax", ["rle", "jpeg_baseline"])
def test_compressed_dicom_with_a_decoder_is_decoded(syntax):
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit, RLELossless

    xray = corpus_module.xray_like(96, 128)
    if syntax == "rle":
        # RLE Lossless: pydicom decodes it natively, so output equals the stored values.
        ds = pydicom.dcmread(io.BytesIO(corpus_module.dicom_bytes(xray)))
        ds.compress(RLELossless)
        tolerance = 0
    else:
        # JPEG baseline: decoded through pydicom's Pillow plugin (lossy, so approximate).
        ds = pydicom.dcmread(io.BytesIO(corpus_module.dicom_bytes(xray)))
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.PixelData = encapsulate([corpus_module._encode(Image.fromarray(xray), "JPEG", quality=95)])
        ds["PixelData"].VR = "OB"
        tolerance = 4
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    gray = load_image(buffer.getvalue())[..., 0].astype(int)
    assert np.abs(gray - xray).mean() <= tolerance


def test_rgb_dicom_is_kept():
    rgb = corpus_module.colour_photo(96, 128)
    ds = pydicom.dcmread(io.BytesIO(corpus_module.dicom_bytes(rgb[..., 0])))
    ds.SamplesPerPixel, ds.PlanarConfiguration, ds.PhotometricInterpretation = 3, 0, "RGB"
    ds.PixelData = rgb.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    assert np.array_equal(load_image(buffer.getvalue()), rgb)


def test_dicom_multiframe_gives_first_frame(corpus):
    case = corpus["dicom_multiframe"]
    first = pydicom.dcmread(case.path).pixel_array[0]
    assert (load_image(case.path)[..., 0] == first).all()


def test_dicom_without_preamble_matches_with_preamble(corpus):
    assert np.array_equal(
        load_image(corpus["dicom_no_preamble"].path), load_image(corpus["dicom_mono2_8bit"].path)
    )


def test_dicom_unsupported_message_names_syntax_and_fix(corpus):
    with pytest.raises(ImageDecodeError) as info:
        load_image(corpus["dicom_jpeg2000_garbage"].path)
    message = str(info.value)
    assert "1.2.840.10008.1.2.4.90" in message and "JPEG 2000" in message
    assert "uncompressed DICOM or PNG" in message


def test_dicom_too_large_is_refused_from_header():
    data = corpus_module.dicom_bytes(corpus_module.xray_like(96, 128))
    with pytest.raises(ImageDecodeError) as info:
        load_image(data, max_pixels=1000)
    assert info.value.reason == "too_large"


def test_is_probably_dicom(corpus):
    assert is_probably_dicom(corpus["dicom_mono2_8bit"].path.read_bytes())
    assert is_probably_dicom(corpus["dicom_no_preamble"].path.read_bytes())
    for name in ("png_gray16", "jpeg_cmyk", "text_as_dcm", "empty", "webp"):
        assert not is_probably_dicom(corpus[name].path.read_bytes()), name


# ---------------------------------------------------------------------------
# Limits and robustness.
# ---------------------------------------------------------------------------
def _forbid_decoding(monkeypatch):
    def fail(*_args, **_kwargs):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", fail)


@pytest.mark.parametrize("pillow_limit", ["default", "disabled"], ids=["pillow-limit", "own-limit-only"])
def test_bomb_refused_quickly_without_decoding(corpus, monkeypatch, pillow_limit):
    if pillow_limit == "disabled":
        # Even with Pillow's own bomb check switched off, our header check refuses it.
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    _forbid_decoding(monkeypatch)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ImageDecodeError) as info:
            load_image(corpus["png_bomb_header"].path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.reason == "too_large"
    assert time.perf_counter() - start < 1.0
    assert peak < 5 * 1024**2
    assert "megapixels" in str(info.value)


def test_max_pixels_argument(corpus, monkeypatch):
    _forbid_decoding(monkeypatch)
    with pytest.raises(ImageDecodeError) as info:
        load_image(corpus["png_named_jpg"].path, max_pixels=5000)
    assert info.value.reason == "too_large"
    assert "128x96" in str(info.value)


@pytest.mark.parametrize("kind", ["path", "bytes", "file"])
def test_max_bytes(corpus, kind):
    case = corpus["png_negative"]
    source = {
        "path": case.path,
        "bytes": case.path.read_bytes(),
        "file": io.BytesIO(case.path.read_bytes()),
    }[kind]
    with pytest.raises(ImageDecodeError) as info:
        load_image(source, max_bytes=1000)
    assert info.value.reason == "file_too_large"
    if kind == "file":
        assert source.tell() == 1001  # read no more than the limit + 1 byte


def test_truncated_raises_even_if_pillow_pads_globally(corpus, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    for name in ("truncated_jpeg", "truncated_png"):
        with pytest.raises(ImageDecodeError) as info:
            load_image(corpus[name].path)
        assert info.value.reason == "truncated"
        assert "truncated or corrupted" in str(info.value)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the caller's setting is restored


def test_too_small_message(corpus):
    with pytest.raises(ImageDecodeError) as info:
        load_image(corpus["png_8x8"].path)
    assert "8x8" in str(info.value) and f"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}" in str(info.value)


@pytest.mark.parametrize(
    "name",
    ["png_gray16", "jpeg_exif_rotated", "dicom_mono1", "dicom_no_preamble", "gif_animated", "text_as_png"],
)
def test_path_bytes_and_file_give_identical_output(corpus, name):
    path = corpus[name].path
    data = path.read_bytes()
    sources = [path, str(path), data, bytearray(data), memoryview(data), io.BytesIO(data)]
    results = []
    for source in sources:
        try:
            results.append(load_image(source))
        except ImageDecodeError as exc:
            results.append(exc.reason)
    with path.open("rb") as handle:
        try:
            results.append(load_image(handle))
        except ImageDecodeError as exc:
            results.append(exc.reason)
    first = results[0]
    for other in results[1:]:
        if isinstance(first, str):
            assert other == first
        else:
            assert np.array_equal(other, first)


def test_bad_source_types(tmp_path):
    with pytest.raises(TypeError):
        load_image(12345)
    text_file = tmp_path / "a.txt"
    text_file.write_text("hello")
    with text_file.open("r") as handle, pytest.raises(TypeError):
        load_image(handle)
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ValueError):
        load_image(b"\x89PNG", draft_size=0)


# ---------------------------------------------------------------------------
# Large images and the JPEG draft hint.
# ---------------------------------------------------------------------------
def test_large_jpeg_decodes_in_full(corpus):
    start = time.perf_counter()
    rgb = load_image(corpus["jpeg_large_xray"].path)
    elapsed = time.perf_counter() - start
    assert rgb.shape == (corpus_module.LARGE_HEIGHT, corpus_module.LARGE_WIDTH, 3)
    assert elapsed < 10  # about 0.3 s here; generous for a shared CI machine


def test_draft_size_reduces_large_jpeg(corpus):
    rgb = load_image(corpus["jpeg_large_xray"].path, draft_size=224)
    # The DCT scale is at most 1/8 and never takes a side below the requested size.
    assert min(rgb.shape[:2]) >= 224
    assert rgb.shape[:2] == (corpus_module.LARGE_HEIGHT // 8, corpus_module.LARGE_WIDTH // 8)


def test_draft_size_keeps_orientation_and_ignores_non_jpeg(corpus):
    assert load_image(corpus["jpeg_exif_rotated"].path, draft_size=32).shape[:2] == (64, 48)
    assert load_image(corpus["png_gray16"].path, draft_size=32).shape[:2] == (96, 128)


# ---------------------------------------------------------------------------
# The real dataset.
# ---------------------------------------------------------------------------
def _reference_rgb(path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(ImageOps.exif_transpose(img).convert("RGB"))


@pytest.mark.parametrize("suffixes", [(".png",), (".jpg", ".jpeg")], ids=["png", "jpeg"])
def test_real_dataset_image(data_dir, suffixes):
    path = next(p for p in sorted(data_dir.rglob("*")) if p.suffix.lower() in suffixes)
    rgb = load_image(path)
    assert rgb.shape == (640, 640, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb, _reference_rgb(path))


@pytest.mark.slow
def test_every_dataset_image_decodes(data_dir):
    paths = [p for p in sorted(data_dir.rglob("*")) if p.suffix.lower() in (".png", ".jpg", ".jpeg")]
    assert len(paths) == 317
    for path in paths:
        assert load_image(path).shape == (640, 640, 3), path
