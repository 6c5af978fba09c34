"""Synthetic inputs, generated in code (no binary fixtures, nothing from the dataset):

- `build_corpus(directory)`: bad and odd files for the decoder, the API and the CLI (truncated,
  16-bit, RGBA, DICOM, animated, a decompression bomb, ...), each with the outcome expected of
  `imaging.load_image` (`CorpusCase.expect` "ok", or "error" with `ImageDecodeError.reason`);
  drawn with NumPy, written with Pillow or pydicom; well under 3 s.
- `synthetic_non_xrays(seed)`: photos, screenshots, scenes, limb and skull radiograph look-alikes
  and patterns, encoded as files: the non-X-ray set on which the input guard's hit rate is
  measured (`python -m covid_xray.studies.ood measure`).
"""

from __future__ import annotations

import functools
import io
import logging
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------
# The bad-file corpus.
# ---------------------------------------------------------------------------
# Side lengths of the ordinary (small) corpus images; all above config.MIN_IMAGE_SIDE.
SMALL_HEIGHT, SMALL_WIDTH = 96, 128
# The large, valid X-ray: width x height, as a modern flat-panel detector produces.
LARGE_WIDTH, LARGE_HEIGHT = 6000, 5000
# The decompression bomb's claimed size (1.6 gigapixels) and the DICOM window used.
BOMB_SIDE = 40_000
WINDOW_CENTER, WINDOW_WIDTH = 2048, 1024

# DX image storage (for presentation): the SOP class of a digital chest radiograph.
_DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"


@dataclass(frozen=True)
class CorpusCase:
    """One corpus file and what the decoder must do with it.

    Attributes:
        name: short identifier, usable as a pytest id.
        path: the generated file.
        expect: "ok" (decodes to an RGB array) or "error" (raises ImageDecodeError).
        reason: the expected ``ImageDecodeError.reason`` when expect == "error", else None.
        note: what the file is and why it is in the corpus.
    """

    name: str
    path: Path
    expect: str
    reason: str | None
    note: str


def build_corpus(directory: Path, *, include_large: bool = True) -> list[CorpusCase]:
    """Write the corpus into ``directory`` (created if needed) and describe each file.

    Args:
        directory: where to write the files.
        include_large: also write the 6000x5000 JPEG (about 1 MB, the slowest case to build).

    Returns:
        The cases, in a fixed order with unique names.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cases: list[CorpusCase] = []

    def add(name: str, filename: str, content: bytes, expect: str, reason: str | None, note: str) -> None:
        path = directory / filename
        path.write_bytes(content)
        cases.append(CorpusCase(name, path, expect, reason, note))

    xray = xray_like(SMALL_HEIGHT, SMALL_WIDTH)
    xray_png = _encode(Image.fromarray(xray), "PNG")
    xray_jpeg = _encode(Image.fromarray(xray), "JPEG", quality=90)

    # --- Errors --------------------------------------------------------------------------
    add("empty", "empty.png", b"", "error", "empty", "zero-byte file")
    add(
        "text_as_png",
        "notes.png",
        b"Patient notes: follow-up in two weeks.\n" * 4,
        "error",
        "not_an_image",
        "plain text renamed .png",
    )
    add(
        "text_as_dcm",
        "notes.dcm",
        b"Not a DICOM file, just text with a .dcm extension.\n" * 4,
        "error",
        "not_an_image",
        "plain text renamed .dcm (the forced DICOM read must not accept it)",
    )
    add(
        "truncated_jpeg",
        "truncated.jpg",
        xray_jpeg[: len(xray_jpeg) * 6 // 10],
        "error",
        "truncated",
        "valid JPEG cut at 60% of its bytes",
    )
    add(
        "truncated_png",
        "truncated.png",
        xray_png[: len(xray_png) * 6 // 10],
        "error",
        "truncated",
        "valid PNG cut at 60% of its bytes",
    )
    add("png_1x1", "pixel.png", _encode(Image.new("L", (1, 1), 128), "PNG"), "error", "too_small", "1x1 PNG")
    add("png_8x8", "icon.png", _encode(Image.new("L", (8, 8), 128), "PNG"), "error", "too_small", "8x8 PNG")
    add(
        "png_bomb_header",
        "bomb.png",
        png_with_claimed_size(BOMB_SIDE, BOMB_SIDE),
        "error",
        "too_large",
        f"tiny PNG whose IHDR claims {BOMB_SIDE}x{BOMB_SIDE} (valid CRC): a decompression bomb",
    )

    # --- Ordinary formats and odd modes -----------------------------------------------------
    ramp16 = gray16_ramp(SMALL_HEIGHT, SMALL_WIDTH)
    add(
        "png_gray16",
        "gray16.png",
        _encode(Image.fromarray(ramp16), "PNG"),
        "ok",
        None,
        "16-bit greyscale PNG using 12 bits (0..4095), must not come out dark",
    )
    add(
        "tiff_gray16",
        "gray16.tiff",
        _encode(Image.fromarray(ramp16), "TIFF"),
        "ok",
        None,
        "16-bit greyscale TIFF (0..4095)",
    )
    add(
        "png_rgba",
        "rgba.png",
        _encode(rgba_half_transparent(SMALL_HEIGHT, SMALL_WIDTH), "PNG"),
        "ok",
        None,
        "RGBA PNG, left half fully transparent (composited onto black)",
    )
    add(
        "png_palette",
        "palette.png",
        _encode(Image.fromarray(xray).convert("P"), "PNG"),
        "ok",
        None,
        "palette (P mode) PNG",
    )
    add(
        "jpeg_cmyk",
        "cmyk.jpg",
        _encode(Image.fromarray(xray).convert("CMYK"), "JPEG", quality=90),
        "ok",
        None,
        "CMYK JPEG (as written by print workflows)",
    )
    add(
        "gif_animated",
        "animated.gif",
        animated_gif(SMALL_HEIGHT, SMALL_WIDTH),
        "ok",
        None,
        "3-frame animated GIF; the first frame (uniform level 40) is used",
    )
    add(
        "jpeg_exif_rotated",
        "rotated.jpg",
        exif_rotated_jpeg(SMALL_HEIGHT, SMALL_WIDTH),
        "ok",
        None,
        "JPEG stored landscape with EXIF orientation 6 (rotate 90 degrees clockwise)",
    )
    add(
        "png_negative",
        "negative.png",
        _encode(Image.fromarray(255 - xray), "PNG"),
        "ok",
        None,
        "inverted (negative) greyscale X-ray: decodes fine, it is the model's problem",
    )
    add("bmp", "xray.bmp", _encode(Image.fromarray(xray), "BMP"), "ok", None, "8-bit greyscale BMP")
    add(
        "webp",
        "xray.webp",
        _encode(Image.fromarray(xray).convert("RGB"), "WEBP", quality=90),
        "ok",
        None,
        "lossy WebP",
    )
    add(
        "photo_colour",
        "photo.jpg",
        _encode(Image.fromarray(colour_photo(SMALL_HEIGHT, SMALL_WIDTH)), "JPEG", quality=90),
        "ok",
        None,
        "saturated colour photo, not an X-ray (decodes fine; rejecting it is not the decoder's job)",
    )
    add("png_named_jpg", "misleading.jpg", xray_png, "ok", None, "PNG content with a .jpg extension")

    # --- DICOM -----------------------------------------------------------------------------
    add(
        "dicom_mono2_8bit",
        "mono2_8bit.dcm",
        dicom_bytes(xray),
        "ok",
        None,
        "DICOM MONOCHROME2, 8 bits: output equals the stored values",
    )
    add(
        "dicom_mono2_16bit",
        "mono2_16bit.dcm",
        dicom_bytes(ramp16, bits_stored=12),
        "ok",
        None,
        "DICOM MONOCHROME2, 12 bits stored in 16, no window: min-max scaled",
    )
    add(
        "dicom_mono1",
        "mono1.dcm",
        dicom_bytes(xray, photometric="MONOCHROME1"),
        "ok",
        None,
        "DICOM MONOCHROME1 (bones stored dark): output is 255 - stored",
    )
    add(
        "dicom_window",
        "window.dcm",
        dicom_bytes(ramp16, bits_stored=12, WindowCenter=WINDOW_CENTER, WindowWidth=WINDOW_WIDTH),
        "ok",
        None,
        f"DICOM 12-bit ramp with a VOI window (centre {WINDOW_CENTER}, width {WINDOW_WIDTH})",
    )
    add(
        "dicom_no_preamble",
        "bare.dcm",
        dicom_bytes(xray, preamble=False),
        "ok",
        None,
        "DICOM dataset without the 128-byte preamble and 'DICM' marker",
    )
    add(
        "dicom_multiframe",
        "multiframe.dcm",
        dicom_bytes(np.stack([xray, 255 - xray, xray // 2])),
        "ok",
        None,
        "DICOM with 3 frames; the first is used",
    )
    add("dicom_named_png", "scan.png", dicom_bytes(xray), "ok", None, "DICOM content with a .png extension")
    add(
        "dicom_no_pixels",
        "report.dcm",
        dicom_bytes(None),
        "error",
        "dicom_no_pixels",
        "DICOM header only (e.g. a structured report): no Pixel Data",
    )
    add(
        "dicom_jpeg2000_garbage",
        "j2k.dcm",
        dicom_jpeg2000_garbage(SMALL_HEIGHT, SMALL_WIDTH),
        "error",
        "dicom_unsupported",
        "DICOM with JPEG 2000 transfer syntax (1.2.840.10008.1.2.4.90) and garbage pixel data",
    )
    add(
        "dicom_truncated_pixels",
        "short.dcm",
        dicom_bytes(xray)[:-2000],
        "error",
        "truncated",
        "uncompressed DICOM whose Pixel Data ends early",
    )

    if include_large:
        add(
            "jpeg_large_xray",
            "large_xray.jpg",
            large_xray_jpeg(),
            "ok",
            None,
            f"valid {LARGE_WIDTH}x{LARGE_HEIGHT} greyscale X-ray-like JPEG (30 megapixels)",
        )
    return cases


# ---------------------------------------------------------------------------
# Pixel content.
# ---------------------------------------------------------------------------
def xray_like(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A chest-radiograph-like 8-bit image: dark background, bright body, dark lungs, a bright
    spine and ribs, plus mild noise. Not anatomy; just X-ray-like statistics and structure."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    yn, xn = y / max(height - 1, 1) * 2 - 1, x / max(width - 1, 1) * 2 - 1
    body = ((xn / 0.85) ** 2 + (yn / 1.05) ** 2) < 1
    lungs = (((np.abs(xn) - 0.4) / 0.28) ** 2 + ((yn + 0.05) / 0.6) ** 2) < 1
    spine = np.abs(xn) < 0.08
    ribs = (np.sin(yn * 18 + np.abs(xn) * 4) > 0.7) & lungs
    img = np.full((height, width), 15, np.float32)
    img[body] = 170
    img[lungs] = 60
    img[ribs] = 120
    img[spine & body] = 220
    img += rng.normal(0, 4, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def gray16_ramp(height: int, width: int, top: int = 4095) -> np.ndarray:
    """A 16-bit horizontal ramp 0..top (12-bit detector data in a 16-bit container)."""
    ramp = np.linspace(0, top, width).round().astype(np.uint16)
    return np.ascontiguousarray(np.broadcast_to(ramp, (height, width)))


def rgba_half_transparent(height: int, width: int) -> Image.Image:
    """Light-grey RGBA image whose left half has alpha 0 and right half alpha 255."""
    rgba = np.full((height, width, 4), 200, np.uint8)
    rgba[:, : width // 2, 3] = 0
    rgba[:, width // 2 :, 3] = 255
    return Image.fromarray(rgba, "RGBA")


def colour_photo(height: int, width: int) -> np.ndarray:
    """Saturated colour bands and gradients, nothing like a radiograph."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[..., 0] = (x * 255 // max(width - 1, 1)).astype(np.uint8)
    rgb[..., 1] = (y * 255 // max(height - 1, 1)).astype(np.uint8)
    rgb[..., 2] = np.where((x // 16 + y // 16) % 2 == 0, 255, 0).astype(np.uint8)
    return rgb


# ---------------------------------------------------------------------------
# Encoded files.
# ---------------------------------------------------------------------------
def _encode(img: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_with_claimed_size(width: int, height: int) -> bytes:
    """A tiny, well-formed PNG whose header claims width x height 8-bit greyscale pixels.

    The IHDR is crafted by hand with a correct CRC, so only a size check can refuse it; the
    IDAT holds a few compressed rows, far fewer than the header promises.
    """

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    # width, height, bit depth 8, colour type 0 (grey), compression 0, filter 0, no interlace.
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (width + 1) * 4)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def animated_gif(height: int, width: int, levels: tuple[int, ...] = (40, 200, 120)) -> bytes:
    """An animated GIF whose frames are uniform grey at the given levels (first = 40)."""
    frames = [Image.new("L", (width, height), level).convert("P") for level in levels]
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def exif_rotated_jpeg(height: int, width: int) -> bytes:
    """A landscape (height x width stored) JPEG with a bright square in its stored top-left
    corner and EXIF orientation 6: displayed, it is portrait with the square top-right."""
    pixels = np.full((height, width), 30, np.uint8)
    pixels[: height // 3, : width // 3] = 230
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = 6  # Orientation: the viewer rotates 90 degrees clockwise.
    return _encode(img, "JPEG", quality=95, exif=exif.tobytes())


@functools.lru_cache(maxsize=1)  # bytes are immutable; later builds in a session reuse them
def large_xray_jpeg() -> bytes:
    """A LARGE_WIDTH x LARGE_HEIGHT greyscale X-ray-like JPEG, drawn small and upscaled
    (smooth content keeps both drawing and encoding fast)."""
    small = Image.fromarray(xray_like(LARGE_HEIGHT // 10, LARGE_WIDTH // 10, seed=1))
    return _encode(small.resize((LARGE_WIDTH, LARGE_HEIGHT), Image.Resampling.BILINEAR), "JPEG", quality=85)


def _dicom_dataset(transfer_syntax: str):
    """A DX dataset with file meta information and the identifying elements filled."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _DX_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = _DX_SOP_CLASS
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientName = "Synthetic^Corpus"
    ds.PatientID = "CORPUS-0001"
    ds.BodyPartExamined = "CHEST"
    return ds


def dicom_bytes(
    pixels: np.ndarray | None,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    preamble: bool = True,
    **elements,
) -> bytes:
    """Write an uncompressed (explicit VR little endian) DICOM.

    Args:
        pixels: (rows, cols) or (frames, rows, cols) uint8/uint16 array; None for no Pixel Data.
        photometric: MONOCHROME1 or MONOCHROME2.
        bits_stored: defaults to the dtype's size.
        preamble: False writes a bare implicit-VR dataset (no preamble, no file meta).
        **elements: extra elements, e.g. WindowCenter=..., WindowWidth=....
    """
    from pydicom.uid import ExplicitVRLittleEndian

    ds = _dicom_dataset(ExplicitVRLittleEndian)
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    if pixels is not None:
        pixels = np.asarray(pixels)
        if pixels.ndim == 3:
            ds.NumberOfFrames = pixels.shape[0]
        ds.Rows, ds.Columns = pixels.shape[-2:]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = pixels.dtype.itemsize * 8
        ds.BitsStored = bits_stored or ds.BitsAllocated
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = 0
        ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    buffer = io.BytesIO()
    if preamble:
        ds.save_as(buffer, enforce_file_format=True)
    else:
        del ds.file_meta
        ds.save_as(buffer, implicit_vr=True, little_endian=True)
    return buffer.getvalue()


def dicom_jpeg2000_garbage(height: int, width: int) -> bytes:
    """A DICOM declaring JPEG 2000 lossless (1.2.840.10008.1.2.4.90) whose single encapsulated
    frame is random bytes: no decoder can read it."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless

    ds = _dicom_dataset(JPEG2000Lossless)
    ds.Rows, ds.Columns = height, width
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = encapsulate([np.random.default_rng(2).bytes(512)])
    ds["PixelData"].VR = "OB"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# ---------------------------------------------------------------------------
# The non-X-ray set of the input guard's measurement.
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class SyntheticCase:
    """One generated non-X-ray input: its category, a name, and the encoded file bytes."""

    category: str
    name: str
    content: bytes
    note: str


# Categories of the non-X-ray set; the hit rate is reported per category and overall.
NON_XRAY_CATEGORIES = ("photo", "screenshot", "scene", "limb", "skull", "pattern", "corpus")


# Cases of `build_corpus` that decode to something other than a chest X-ray (ramps, flat
# grey, a bright square, a colour photo). Its other decodable cases draw a synthetic
# chest-like picture; they are scored separately as "corpus_chest_like", outside the hit rate.
CORPUS_NON_XRAY = (
    "png_gray16",
    "tiff_gray16",
    "png_rgba",
    "gif_animated",
    "jpeg_exif_rotated",
    "photo_colour",
    "dicom_mono2_16bit",
    "dicom_window",
)


def _encode_rgb(rgb: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(rgb)
    if fmt == "JPEG":
        image.save(buffer, format="JPEG", quality=88)
    else:
        image.save(buffer, format=fmt)
    return buffer.getvalue()


def _smooth_field(rng: np.random.Generator, height: int, width: int, channels: int, cells: int) -> np.ndarray:
    """Random values on a coarse grid, upsampled smoothly: 0..1 float32 (H, W, C)."""
    coarse = rng.random((cells, cells, channels)).astype(np.float32)
    smooth = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    return np.clip(smooth.reshape(height, width, channels), 0, 1)


def _photo(rng: np.random.Generator, height: int, width: int, variant: int) -> np.ndarray:
    """A colour photo-like picture: smooth colour fields or gradients, plus sensor noise."""
    if variant % 2 == 0:
        img = _smooth_field(rng, height, width, 3, cells=int(rng.integers(3, 8)))
    else:
        y, x = np.mgrid[0:height, 0:width].astype(np.float32)
        angle = rng.uniform(0, np.pi)
        t = (np.cos(angle) * x / width + np.sin(angle) * y / height + 1) / 3
        start, end = rng.random(3), rng.random(3)
        img = start[None, None, :] * (1 - t[..., None]) + end[None, None, :] * t[..., None]
    img = img * 255 + rng.normal(0, 6, (height, width, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _screenshot(rng: np.random.Generator, height: int, width: int, dark: bool) -> np.ndarray:
    """A UI/document screenshot: flat background, a title bar, boxes, lines and text."""
    background = (32, 33, 36) if dark else (255, 255, 255)
    ink = (230, 230, 230) if dark else (20, 20, 20)
    img = np.empty((height, width, 3), np.uint8)
    img[:] = background
    bar = tuple(int(c) for c in rng.integers(30, 220, 3))
    cv2.rectangle(img, (0, 0), (width - 1, max(24, height // 18)), bar, thickness=-1)
    scale = max(0.4, width / 1600)
    row = max(40, height // 12)
    y = row + 30
    while y < height - 20:
        words = " ".join(
            "".join(chr(int(c)) for c in rng.integers(97, 123, int(rng.integers(3, 9))))
            for _ in range(int(rng.integers(3, 9)))
        )
        cv2.putText(img, words, (20, y), cv2.FONT_HERSHEY_SIMPLEX, scale, ink, 1, cv2.LINE_AA)
        if rng.random() < 0.3:
            x0 = int(rng.integers(0, width // 2))
            box = tuple(int(c) for c in rng.integers(0, 255, 3))
            cv2.rectangle(img, (x0, y + 8), (x0 + int(rng.integers(60, width // 2)), y + row - 12), box, 2)
        if rng.random() < 0.3:
            cv2.line(img, (10, y + row // 2), (width - 10, y + row // 2), ink, 1)
        y += row
    return img


def _scene(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A saturated outdoor-scene-like picture: sky gradient, green ground, sun, tree blobs."""
    img = np.zeros((height, width, 3), np.float32)
    horizon = int(height * rng.uniform(0.4, 0.65))
    t = np.linspace(0, 1, horizon, dtype=np.float32)[:, None]
    img[:horizon] = (np.array([40, 110, 230]) * (1 - t) + np.array([170, 210, 250]) * t)[:, None, :]
    ground = _smooth_field(rng, height - horizon, width, 1, cells=6)
    img[horizon:] = np.array([40, 150, 50]) * (0.6 + 0.6 * ground)
    sun = (int(rng.integers(width // 8, width - width // 8)), int(rng.integers(20, max(21, horizon // 2))))
    cv2.circle(img, sun, max(10, width // 16), (255, 220, 60), -1)
    for _ in range(int(rng.integers(3, 8))):
        centre = (int(rng.integers(0, width)), horizon + int(rng.integers(-height // 10, height // 10)))
        axes = (int(rng.integers(width // 30, width // 10)), int(rng.integers(height // 15, height // 6)))
        cv2.ellipse(img, centre, axes, 0, 0, 360, (20, int(rng.integers(90, 160)), 30), -1)
    img += rng.normal(0, 5, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _grey(img: np.ndarray, rng: np.random.Generator, noise: float = 4.0) -> np.ndarray:
    """Blur a drawn greyscale radiograph-like picture, add noise, return it as RGB uint8."""
    img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), 2.0)
    img += rng.normal(0, noise, img.shape)
    grey = np.clip(img, 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def _limb(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A hand/limb-radiograph-like picture: grey soft tissue and elongated bright bones on black."""
    img = np.full((height, width), 12, np.float32)
    cx = width / 2 + rng.uniform(-0.1, 0.1) * width
    tilt = rng.uniform(-15, 15)
    cv2.ellipse(
        img, (int(cx), int(height * 0.6)), (int(width * 0.22), int(height * 0.45)), tilt, 0, 360, 95, -1
    )
    # Two long bones (forearm) and five finger rays with short phalanges.
    for dx in (-0.06, 0.06):
        centre = (int(cx + dx * width), int(height * 0.75))
        cv2.ellipse(img, centre, (int(width * 0.035), int(height * 0.22)), tilt, 0, 360, 215, -1)
    for finger in range(5):
        x = cx + (finger - 2) * width * 0.07
        for segment in range(3):
            y = height * (0.42 - 0.12 * segment)
            cv2.ellipse(img, (int(x), int(y)), (int(width * 0.02), int(height * 0.05)), tilt, 0, 360, 200, -1)
    return _grey(img, rng)


def _skull(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A skull-radiograph-like picture: a bright elliptical vault, grey brain, dark orbits."""
    img = np.full((height, width), 10, np.float32)
    centre = (width // 2, int(height * 0.48))
    axes = (int(width * rng.uniform(0.32, 0.4)), int(height * rng.uniform(0.38, 0.45)))
    cv2.ellipse(img, centre, axes, 0, 0, 360, 225, -1)
    inner = (int(axes[0] * 0.9), int(axes[1] * 0.9))
    cv2.ellipse(img, centre, inner, 0, 0, 360, 110, -1)
    texture = _smooth_field(rng, height, width, 1, cells=12)[..., 0]
    img += (texture - 0.5) * 40 * (img > 50)
    for side in (-1, 1):
        orbit = (centre[0] + side * axes[0] // 3, centre[1] + axes[1] // 4)
        cv2.ellipse(img, orbit, (axes[0] // 6, axes[1] // 8), 0, 0, 360, 55, -1)
    cv2.ellipse(
        img, (centre[0], centre[1] + int(axes[1] * 0.85)), (axes[0] // 2, axes[1] // 5), 0, 0, 180, 200, 8
    )
    return _grey(img, rng)


def _patterns(rng: np.random.Generator) -> list[tuple[str, np.ndarray, str]]:
    """Checkerboards, uniform grey and pure noise (name, RGB, note)."""
    out = []
    for square in (16, 64):
        y, x = np.mgrid[0:512, 0:512]
        board = np.where((x // square + y // square) % 2 == 0, 230, 25).astype(np.uint8)
        out.append(
            (f"checkerboard_{square}", np.repeat(board[..., None], 3, axis=2), f"{square}-pixel checkerboard")
        )
    for level in (128, 40):
        out.append(
            (f"uniform_{level}", np.full((480, 480, 3), level, np.uint8), f"uniform grey level {level}")
        )
    uniform_noise = rng.integers(0, 256, (512, 512), dtype=np.uint8)
    out.append(("noise_uniform", np.repeat(uniform_noise[..., None], 3, axis=2), "uniform white noise, grey"))
    gauss = np.clip(rng.normal(128, 40, (512, 512)), 0, 255).astype(np.uint8)
    out.append(("noise_gaussian", np.repeat(gauss[..., None], 3, axis=2), "Gaussian noise around mid-grey"))
    return out


def synthetic_non_xrays(seed: int = 0) -> list[SyntheticCase]:
    """The generated non-X-ray set (without the corpus cases): 37 encoded images.

    Colour photos (JPEG), screenshots (PNG, light and dark themes, desktop and phone shapes),
    saturated outdoor scenes (JPEG), greyscale non-chest radiograph-like images (limbs and
    skulls, JPEG) and patterns (checkerboards, uniform grey, noise; PNG).
    """
    rng = np.random.default_rng(seed)
    cases: list[SyntheticCase] = []
    photo_sizes = [
        (480, 640),
        (640, 480),
        (600, 800),
        (768, 1024),
        (512, 512),
        (720, 960),
        (900, 600),
        (480, 720),
    ]
    for i, (h, w) in enumerate(photo_sizes):
        kind = "smooth colour field" if i % 2 == 0 else "colour gradient"
        cases.append(
            SyntheticCase(
                "photo", f"photo_{i}", _encode_rgb(_photo(rng, h, w, i), "JPEG"), f"{kind}, {w}x{h}"
            )
        )
    screen_sizes = [
        (800, 1280),
        (1080, 1920),
        (768, 1024),
        (900, 1440),
        (2340, 1080),
        (1200, 800),
        (600, 800),
        (1024, 1024),
    ]
    for i, (h, w) in enumerate(screen_sizes):
        dark = i in (3, 6)
        theme = "dark" if dark else "light"
        img = _screenshot(rng, h, w, dark)
        cases.append(
            SyntheticCase("screenshot", f"screenshot_{i}", _encode_rgb(img, "PNG"), f"{theme} UI, {w}x{h}")
        )
    for i, (h, w) in enumerate([(480, 640), (600, 800), (720, 960), (512, 512), (640, 480), (768, 1024)]):
        cases.append(
            SyntheticCase(
                "scene", f"scene_{i}", _encode_rgb(_scene(rng, h, w), "JPEG"), f"outdoor scene, {w}x{h}"
            )
        )
    for i, (h, w) in enumerate([(640, 512), (800, 600), (512, 512), (700, 560), (600, 480)]):
        cases.append(
            SyntheticCase(
                "limb", f"limb_{i}", _encode_rgb(_limb(rng, h, w), "JPEG"), f"hand/forearm-like, {w}x{h}"
            )
        )
    for i, (h, w) in enumerate([(640, 512), (512, 512), (600, 560), (700, 600)]):
        cases.append(
            SyntheticCase(
                "skull", f"skull_{i}", _encode_rgb(_skull(rng, h, w), "JPEG"), f"skull-like, {w}x{h}"
            )
        )
    for name, img, note in _patterns(rng):
        cases.append(SyntheticCase("pattern", name, _encode_rgb(img, "PNG"), note))
    return cases


def corpus_cases(directory: Path) -> tuple[list[tuple[str, Path, str]], list[tuple[str, Path, str]]]:
    """Decodable cases of `build_corpus`: (non-X-ray cases, chest-like cases), each (name, path, note)."""
    cases = [c for c in build_corpus(directory, include_large=False) if c.expect == "ok"]
    non_xray = [(c.name, c.path, c.note) for c in cases if c.name in CORPUS_NON_XRAY]
    chest_like = [(c.name, c.path, c.note) for c in cases if c.name not in CORPUS_NON_XRAY]
    return non_xray, chest_like
