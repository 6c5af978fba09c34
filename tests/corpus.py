"""A corpus of bad and odd inputs for the decoder, the API and the CLI, generated in code.

No binary fixtures: every file is drawn with NumPy and written with Pillow or pydicom into a
directory the caller provides (usually pytest's ``tmp_path``). Build time is well under 3 s.

Usage::

    from tests.corpus import build_corpus
    cases = build_corpus(tmp_path)            # list[CorpusCase]
    for case in cases:
        ...  # case.expect == "ok" -> load_image(case.path) works;
             # case.expect == "error" -> ImageDecodeError with .reason == case.reason
"""

from __future__ import annotations

import functools
import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

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
