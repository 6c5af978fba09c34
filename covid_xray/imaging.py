"""Decode uploaded files and dataset images into 8-bit RGB arrays.

Every image enters the project through :func:`load_image`, so every consumer (training, the
app, the CLI) sees the same pixels. Decisions made here, once:

- The format is detected from the content (magic bytes, Pillow's own sniffing, the DICOM
  "DICM" marker at offset 128), never from the file extension: a ``.jpg`` holding a PNG works.
  The only use of the extension is to let a ``.dcm`` file without the 128-byte preamble be
  read by pydicom with ``force=True``.
- Transparent pixels are composited onto **black**: X-ray backgrounds are dark, so a
  transparent border stays background instead of turning into a bright frame.
- Images deeper than 8 bits (16-bit PNG/TIFF, Pillow modes ``I;16``, ``I``, ``F``) are scaled by
  the min-max of their actual pixel values, not by their container's bit depth: detectors
  store 10-14 significant bits in 16-bit files, and dividing by 65535 would make them black.
  8-bit images are never stretched.
- Animated GIFs, multi-page TIFFs and multi-frame DICOMs: the first frame is used.
- DICOM: Modality LUT (rescale slope/intercept), then the VOI LUT or window centre/width, then
  scaling to 8 bits over the VOI output range (so the window keeps its meaning); without a VOI,
  min-max of the modality values (8-bit data is kept as stored). MONOCHROME1 is inverted so
  that bones are white, as in every other image the models see.
- Size limits are checked on the header, before any pixel is decoded, so a decompression
  bomb costs nothing.
"""

from __future__ import annotations

import io
import logging
import os
import struct
import threading
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps

from covid_xray.config import MAX_IMAGE_PIXELS, MAX_UPLOAD_BYTES, MIN_IMAGE_SIDE

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------
# Configurable parameters.
# ---------------------------------------------------------------------------
# Formats Pillow may open. Naming them keeps Pillow's rarer plugins (EPS through Ghostscript,
# PSD, ICO, ...) out of reach of uploaded files. Multi-picture JPEGs from phones open through
# "JPEG" and report the format "MPO".
PIL_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "BMP", "TIFF", "WEBP", "GIF")
SUPPORTED_FORMATS_TEXT = "JPEG, PNG, BMP, TIFF, WebP, GIF or DICOM"
# Extensions that allow a DICOM without its 128-byte preamble to be read with force=True.
DICOM_EXTENSIONS: tuple[str, ...] = (".dcm", ".dicom", ".dic")

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO

REASONS: tuple[str, ...] = (
    "empty",
    "file_too_large",
    "not_an_image",
    "truncated",
    "too_large",
    "too_small",
    "dicom_no_pixels",
    "dicom_unsupported",
)

# Errors Pillow raises on malformed data; anything else (MemoryError, KeyboardInterrupt) is not
# a property of the file and propagates.
_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, struct.error, zlib.error)
# Errors pydicom raises on malformed datasets or undecodable pixel data.
_DICOM_ERRORS = (
    OSError,
    EOFError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    RuntimeError,
    NotImplementedError,
    struct.error,
)

# Serialises the rare case where third-party code has switched Pillow's global
# LOAD_TRUNCATED_IMAGES on (see _load_strictly).
_STRICT_LOAD_LOCK = threading.Lock()


class ImageDecodeError(ValueError):
    """Input could not be turned into an X-ray image; the message is meant for people.

    Attributes:
        reason: short machine code, one of :data:`REASONS`.
    """

    def __init__(self, message: str, reason: str = "not_an_image"):
        super().__init__(message)
        self.reason = reason


# ---------------------------------------------------------------------------
# Public API.
# ---------------------------------------------------------------------------
def load_image(
    source: ImageSource,
    *,
    max_pixels: int = MAX_IMAGE_PIXELS,
    max_bytes: int = MAX_UPLOAD_BYTES,
    draft_size: int | None = None,
) -> np.ndarray:
    """Decode an image file into an 8-bit RGB array.

    Supports JPEG, PNG, BMP, TIFF, WebP, GIF and DICOM, detected from the content. Animated
    GIFs (and multi-page TIFFs, multi-frame DICOMs) give their **first frame**. EXIF
    orientation is applied. Transparency is composited onto black. Images deeper than 8 bits
    are min-max scaled to 0..255; DICOM gets its Modality LUT, VOI LUT/window and MONOCHROME1
    inversion (module docstring).

    Args:
        source: a file path (str or PathLike), the file's bytes (bytes, bytearray, memoryview)
            or a binary file-like object (read from its current position).
        max_pixels: refuse images with more than this many pixels (width x height, checked on
            the header before decoding). Pillow's own bomb limit
            (``PIL.Image.MAX_IMAGE_PIXELS`` x 2) also applies.
        max_bytes: refuse files larger than this many bytes.
        draft_size: speed hint for JPEG: decode at a reduced DCT scale (1/2, 1/4 or 1/8) that
            keeps both sides >= draft_size. ``None`` (default) decodes at full resolution.
            Other formats ignore it.

    Returns:
        Array of shape (H, W, 3), dtype uint8, C-contiguous.

    Raises:
        ImageDecodeError: the content is not a usable image; ``.reason`` says why
            ("empty", "file_too_large", "not_an_image", "truncated", "too_large",
            "too_small", "dicom_no_pixels", "dicom_unsupported").
        OSError: a path that cannot be read (missing file, permissions).
        TypeError: an unsupported ``source`` type, or a file object opened in text mode.
    """
    if draft_size is not None and draft_size < 1:
        raise ValueError(f"draft_size must be a positive number of pixels or None, got {draft_size}.")
    data, name = _read_source(source, max_bytes)
    if not data:
        raise ImageDecodeError("This file is empty (0 bytes). Please upload the image again.", "empty")

    if is_probably_dicom(data):
        return _decode_dicom(data, max_pixels, force=data[128:132] != b"DICM", fallback=False)
    try:
        return _decode_with_pillow(data, max_pixels, draft_size)
    except ImageDecodeError as exc:
        # A DICOM without its preamble and with an unusual first element only announces itself
        # by its extension; that is the one case where the name matters.
        if exc.reason == "not_an_image" and Path(name).suffix.lower() in DICOM_EXTENSIONS:
            return _decode_dicom(data, max_pixels, force=True, fallback=True)
        raise


def is_probably_dicom(data: bytes) -> bool:
    """Whether ``data`` looks like DICOM: "DICM" at offset 128, or a bare dataset starting with
    a group 0002 (file meta) or 0008 (identifying) element in little-endian encoding."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return True
    if len(data) < 8:
        return False
    group, _element = struct.unpack_from("<HH", data, 0)
    if group not in (0x0002, 0x0008):
        return False
    # Explicit VR: two upper-case letters; implicit VR: a 4-byte length that fits the file.
    vr = data[4:6]
    if vr.isalpha() and vr.isupper():
        return True
    (length,) = struct.unpack_from("<I", data, 4)
    return length <= len(data) - 8


# ---------------------------------------------------------------------------
# Reading the source.
# ---------------------------------------------------------------------------
def _read_source(source: ImageSource, max_bytes: int) -> tuple[bytes, str]:
    """Return (content, file name or "") without reading more than max_bytes + 1 bytes."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        size = path.stat().st_size
        if size > max_bytes:
            raise _file_too_large(size, max_bytes)
        data = path.read_bytes()
        name = path.name
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        name = ""
    elif hasattr(source, "read"):
        data = source.read(max_bytes + 1)
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError("load_image needs a file opened in binary mode ('rb'), not text mode.")
        data = bytes(data)
        name = getattr(source, "name", "")
        name = name if isinstance(name, str) else ""
    else:
        raise TypeError(
            f"load_image expects a file path, bytes or a binary file object, got {type(source).__name__}."
        )
    if len(data) > max_bytes:
        raise _file_too_large(len(data), max_bytes)
    return data, name


def _file_too_large(size: int, max_bytes: int) -> ImageDecodeError:
    return ImageDecodeError(
        f"This file is {_format_bytes(size)}; the limit is {_format_bytes(max_bytes)}. "
        "Please upload a smaller export (a PNG or JPEG of the X-ray is enough).",
        "file_too_large",
    )


def _format_bytes(n: int) -> str:
    return f"{n / 1024**2:.1f} MB" if n >= 1024**2 else f"{n:,} bytes"


def _format_pixels(n: int) -> str:
    return f"{n / 1e6:.1f} megapixels" if n >= 1_000_000 else f"{n:,} pixels"


def _sniff_format(data: bytes) -> str | None:
    """Name the image format announced by the first bytes, if any (used to tell a corrupted
    image from a file that never was one)."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if data.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):
        return "TIFF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    # "BM" alone is too common in text; also require a known DIB header size.
    if data.startswith(b"BM") and len(data) >= 18:
        (dib_header_size,) = struct.unpack_from("<I", data, 14)
        if dib_header_size in (12, 40, 52, 56, 64, 108, 124):
            return "BMP"
    return None


# ---------------------------------------------------------------------------
# Common checks and messages.
# ---------------------------------------------------------------------------
def _check_dimensions(width: int, height: int, max_pixels: int) -> None:
    """Refuse images too large to decode safely or too small to show a chest."""
    pixels = width * height
    if pixels > max_pixels:
        raise ImageDecodeError(
            f"This image is {width}x{height} pixels ({_format_pixels(pixels)}); the limit is "
            f"{_format_pixels(max_pixels)}. Please downscale it before uploading.",
            "too_large",
        )
    if min(width, height) < MIN_IMAGE_SIDE:
        raise ImageDecodeError(
            f"This image is only {width}x{height} pixels; a chest X-ray needs at least "
            f"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} pixels to show anything.",
            "too_small",
        )


def _pillow_bomb(max_pixels: int) -> ImageDecodeError:
    """Pillow refused the header size (its limit is 2 x PIL.Image.MAX_IMAGE_PIXELS)."""
    limit = max_pixels
    if Image.MAX_IMAGE_PIXELS:
        limit = min(limit, 2 * Image.MAX_IMAGE_PIXELS)
    return ImageDecodeError(
        f"This image has more than {_format_pixels(limit)}, too many to process safely. "
        "Please downscale it before uploading.",
        "too_large",
    )


def _truncated(kind: str) -> ImageDecodeError:
    return ImageDecodeError(
        f"This {kind} file is truncated or corrupted (the image data ends early or is damaged). "
        "Please re-export it.",
        "truncated",
    )


def _not_an_image() -> ImageDecodeError:
    return ImageDecodeError(
        f"This file is not an image we can read. Please upload a {SUPPORTED_FORMATS_TEXT} file.",
        "not_an_image",
    )


# ---------------------------------------------------------------------------
# Pillow formats.
# ---------------------------------------------------------------------------
def _decode_with_pillow(data: bytes, max_pixels: int, draft_size: int | None) -> np.ndarray:
    try:
        # Image.open only parses the header; the pixels are decoded by load() below.
        img = Image.open(io.BytesIO(data), formats=PIL_FORMATS)
    except Image.DecompressionBombError as exc:
        # Pillow's own limit, met before ours only when max_pixels is above it.
        raise _pillow_bomb(max_pixels) from exc
    except _PIL_ERRORS as exc:
        kind = _sniff_format(data)
        if kind is not None:
            raise _truncated(kind) from exc
        raise _not_an_image() from exc

    with img:
        width, height = img.size
        _check_dimensions(width, height, max_pixels)
        kind = img.format or "image"
        if draft_size is not None and img.format in ("JPEG", "MPO"):
            # JPEG can decode at 1/2, 1/4 or 1/8 scale straight from the DCT coefficients;
            # Pillow picks the strongest reduction that keeps both sides >= draft_size.
            img.draft("RGB", (draft_size, draft_size))
        _load_strictly(img, kind, max_pixels)
        try:
            ImageOps.exif_transpose(img, in_place=True)
        except _PIL_ERRORS as exc:
            # A damaged EXIF block should not cost the user the image itself.
            logger.warning("Ignoring unreadable EXIF orientation: %s", exc)
        return _pil_to_rgb(img)


def _load_strictly(img: Image.Image, kind: str, max_pixels: int) -> None:
    """Decode the pixels, raising on truncated data.

    Pillow pads a truncated image with grey when its global ``ImageFile.LOAD_TRUNCATED_IMAGES``
    is on; a half-grey X-ray must never reach a model, so if some other code switched the flag
    on it is switched off for the duration of this decode.
    """
    try:
        if not ImageFile.LOAD_TRUNCATED_IMAGES:
            img.load()
            return
        with _STRICT_LOAD_LOCK:
            previous = ImageFile.LOAD_TRUNCATED_IMAGES
            ImageFile.LOAD_TRUNCATED_IMAGES = False
            try:
                img.load()
            finally:
                ImageFile.LOAD_TRUNCATED_IMAGES = previous
    except Image.DecompressionBombError as exc:
        raise _pillow_bomb(max_pixels) from exc
    except _PIL_ERRORS as exc:
        raise _truncated(kind) from exc


def _pil_to_rgb(img: Image.Image) -> np.ndarray:
    """Convert a loaded Pillow image of any mode to (H, W, 3) uint8."""
    mode = img.mode
    if mode.startswith("I") or mode == "F":
        # 16/32-bit integer or float grey: stretch the values actually used (module docstring).
        return _gray_to_rgb(_minmax_to_uint8(np.asarray(img)))
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in img.info
        img = img.convert("RGBA" if has_alpha else "RGB")
        mode = img.mode
    if mode == "L":
        return _gray_to_rgb(np.asarray(img))
    if mode == "1":
        return _gray_to_rgb(np.asarray(img.convert("L")))
    if mode in ("LA", "La", "RGBA", "RGBa"):
        return _composite_on_black(np.asarray(img.convert("RGBA")))
    if mode != "RGB":
        # CMYK (Pillow undoes Adobe's inverted CMYK while decoding), YCbCr, LAB, HSV.
        img = img.convert("RGB")
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    """Repeat one 8-bit channel three times: the models take RGB input."""
    return np.repeat(np.asarray(gray, dtype=np.uint8)[:, :, None], 3, axis=2)


def _composite_on_black(rgba: np.ndarray) -> np.ndarray:
    """Alpha-composite onto black: out = rgb * alpha / 255, rounded."""
    alpha = rgba[:, :, 3:4].astype(np.uint16)
    out = (rgba[:, :, :3].astype(np.uint16) * alpha + 127) // 255
    return out.astype(np.uint8)


def _minmax_to_uint8(values: np.ndarray) -> np.ndarray:
    """Map the smallest value to 0 and the largest to 255 (non-finite values count as the
    minimum). A constant image carries no contrast and becomes black."""
    values = np.asarray(values)
    if np.issubdtype(values.dtype, np.floating):
        finite = np.isfinite(values)
        if not finite.all():
            low = values[finite].min() if finite.any() else 0.0
            values = np.where(finite, values, low)
    return _rescale_to_uint8(values, float(values.min()), float(values.max()))


def _rescale_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Linearly map [low, high] to [0, 255], clipping outside values."""
    if not high > low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values.astype(np.float32) - np.float32(low)) * np.float32(255.0 / (high - low))
    np.clip(scaled + np.float32(0.5), 0, 255, out=scaled)
    return scaled.astype(np.uint8)


# ---------------------------------------------------------------------------
# DICOM.
# ---------------------------------------------------------------------------
def _decode_dicom(data: bytes, max_pixels: int, *, force: bool, fallback: bool) -> np.ndarray:
    """Decode the first frame of a DICOM file into display-ready 8-bit RGB.

    Args:
        force: read without the "DICM" preamble check.
        fallback: the content was not recognised as DICOM, only the extension was; a failure to
            parse then means "not an image" rather than "corrupted DICOM".
    """
    try:
        import pydicom
        import pydicom.pixels  # noqa: F401 (the pixel API of pydicom >= 3)
        from pydicom.errors import InvalidDicomError
    except ImportError as exc:
        raise ImageDecodeError(
            "This is a DICOM file, but DICOM support is not installed on this server "
            "(install it with `pip install 'pydicom>=3'`). Meanwhile, please export the image as PNG.",
            "dicom_unsupported",
        ) from exc

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=force)
        if fallback and not any(key in ds for key in ("PixelData", "SOPClassUID", "Modality", "Rows")):
            raise _not_an_image()
        return _dicom_dataset_to_rgb(ds, max_pixels)
    except ImageDecodeError:
        raise
    except (InvalidDicomError, *_DICOM_ERRORS) as exc:
        if fallback:
            raise _not_an_image() from exc
        raise _truncated("DICOM") from exc


def _dicom_dataset_to_rgb(ds, max_pixels: int) -> np.ndarray:
    from pydicom.pixels import apply_color_lut, apply_modality_lut, get_decoder, pixel_array

    if "PixelData" not in ds:
        raise ImageDecodeError(
            "This DICOM file holds no image (it has no Pixel Data); it may be a report or a "
            "structured document. Please upload the X-ray image itself.",
            "dicom_no_pixels",
        )
    rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    if not rows or not columns:
        raise ImageDecodeError(
            "This DICOM file has pixel data but no image size (Rows/Columns), so it cannot be shown.",
            "dicom_no_pixels",
        )
    # Checked before decoding, like the Pillow formats: only one frame is ever decoded.
    _check_dimensions(columns, rows, max_pixels)

    tsyntax = _ensure_transfer_syntax(ds)
    try:
        # index=0: the first frame only, without decoding the others.
        frame = pixel_array(ds, index=0)
    except _DICOM_ERRORS as exc:
        if tsyntax.is_compressed:
            try:
                installed = get_decoder(tsyntax).is_available
            except NotImplementedError:
                installed = False
            why = (
                "its data is damaged or the installed decoder cannot read it"
                if installed
                else "no decoder for it is installed here"
            )
            raise ImageDecodeError(
                f"This DICOM file uses the compressed transfer syntax '{tsyntax.name}' ({tsyntax}), "
                f"which could not be decoded ({why}). Please export it as uncompressed DICOM or PNG.",
                "dicom_unsupported",
            ) from exc
        raise _truncated("DICOM") from exc

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    bits_stored = int(ds.get("BitsStored") or frame.dtype.itemsize * 8)

    if frame.ndim == 3:
        # Colour (RGB; YBR was converted to RGB by pydicom): scale by the stored bit depth.
        if bits_stored > 8:
            return _rescale_to_uint8(frame, 0, 2**bits_stored - 1)
        return np.ascontiguousarray(frame, dtype=np.uint8)
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(frame, ds)
        return rgb.astype(np.uint8) if rgb.dtype == np.uint8 else _rescale_to_uint8(rgb, 0, 65535)

    # Greyscale: stored values -> modality values (e.g. rescale slope/intercept) -> VOI.
    values = apply_modality_lut(frame, ds)
    rescaled = bool(ds.get("ModalityLUTSequence")) or (
        float(ds.get("RescaleSlope", 1) or 1) != 1 or float(ds.get("RescaleIntercept", 0) or 0) != 0
    )
    voi = _apply_voi(values, ds)
    if voi is not None:
        windowed, low, high = voi
        gray = _rescale_to_uint8(windowed, low, high)
    elif not rescaled and bits_stored <= 8 and frame.dtype.itemsize == 1:
        # Plain 8-bit data without any LUT is already display-ready: keep it as stored.
        gray = _rescale_to_uint8(frame, 0, 2**bits_stored - 1) if bits_stored < 8 else frame
    else:
        gray = _minmax_to_uint8(values)
    if photometric == "MONOCHROME1":
        # MONOCHROME1 displays its minimum as white, so bones are stored as low values; invert
        # so bones come out white, as in the MONOCHROME2-like images the models learn from.
        gray = 255 - gray
    return _gray_to_rgb(gray)


def _ensure_transfer_syntax(ds):
    """Return the dataset's transfer syntax, inferring it from how the dataset was read when a
    preamble-less file had no file meta information."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    tsyntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if tsyntax:
        return tsyntax
    implicit, little = ds.original_encoding
    if implicit is None or implicit:
        tsyntax = ImplicitVRLittleEndian
    else:
        tsyntax = ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    meta.TransferSyntaxUID = tsyntax
    return tsyntax


def _apply_voi(values: np.ndarray, ds) -> tuple[np.ndarray, float, float] | None:
    """Apply the VOI LUT (preferred when both are present, as pydicom does) or the window
    centre/width.

    Returns (values of interest, output low, output high), or None when the dataset has no VOI
    or an invalid one (logged). The output range is what the radiologist's display maps to
    black..white, so scaling by it (not by the data's min-max) keeps the window's meaning.
    """
    from pydicom.pixels import apply_windowing

    sequence = ds.get("VOILUTSequence")
    has_lut = bool(sequence) and all(sequence[0].get(key) is not None for key in ("LUTDescriptor", "LUTData"))
    has_window = ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None
    if not has_lut and not has_window:
        return None
    try:
        if has_lut:
            return _apply_voi_lut_table(values, ds, sequence[0])
        # Probing with values far outside any window gives the window's output range.
        with np.errstate(over="ignore"):
            low, high = apply_windowing(np.array([-1e30, 1e30]), ds)
        return apply_windowing(values, ds), float(low), float(high)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, NotImplementedError) as exc:
        logger.warning("Ignoring an invalid VOI LUT / window in a DICOM file: %s", exc)
        return None


def _apply_voi_lut_table(values: np.ndarray, ds, item) -> tuple[np.ndarray, float, float]:
    """Map values through the first VOI LUT (PS3.3 C.11.2.1.1).

    Done here rather than with pydicom.pixels.apply_voi: pydicom 3.0 indexes the table through
    an array of the LUT's output dtype, so an 8-bit LUT with more than 256 entries (the usual
    case for 12-bit X-rays) wraps around and gives wrong values.
    """
    descriptor = [int(v) for v in item.LUTDescriptor]
    entries = descriptor[0] or 2**16
    first_mapped = descriptor[1]
    if int(ds.get("PixelRepresentation", 0) or 0) == 1 and first_mapped >= 2**15:
        first_mapped -= 2**16  # the descriptor's second value is signed for signed data
    data = item["LUTData"].value
    if isinstance(data, (bytes, bytearray)):
        little_endian = ds.original_encoding[1] is not False
        table = np.frombuffer(data, dtype="<u2" if little_endian else ">u2")[:entries]
    else:
        table = np.atleast_1d(np.asarray(data, dtype=np.int64))[:entries]
    if table.size == 0:
        raise ValueError("the VOI LUT has no entries")
    # Values below the first mapped value take the first entry; above the last, the last.
    index = np.rint(values).astype(np.int64) - first_mapped
    np.clip(index, 0, table.size - 1, out=index)
    return table[index], float(table.min()), float(table.max())
