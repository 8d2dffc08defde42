"""Turning one decoded picture (PIL image or NumPy array) into the common uint8 SxS grey square.

Aspect ratio: every image is **padded to a square with black (0) around it, centred, then
resized** to SxS with PIL's antialiased bilinear filter. Nothing is cropped, so lesions near
the border (mammograms, ultrasound) survive, and nothing is stretched, so anatomy keeps its
proportions. Black is the background of every modality here (X-ray, MRI, ultrasound,
mammography), so the padding reads as background.

Colour: medical images here are grey; RGB/RGBA/palette files of grey images are reduced to one
channel with the ITU-R 601 luma weights (PIL's ``convert("L")``); an alpha channel is composited
onto black. 16-bit, 32-bit integer and float images are scaled from their own minimum..maximum to
0..255 (a 12-bit X-ray stored in a 16-bit PNG would otherwise look almost black).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

from pumamed.errors import InputError

RESAMPLE = Image.Resampling.BILINEAR
# Largest picture we agree to decode (width x height). PIL's own guard warns above ~89 Mpx and
# raises above twice that; we raise a clear InputError instead (decompression bombs).
DEFAULT_MAX_PIXELS = 64_000_000


def array_to_uint8(array: np.ndarray, low: float | None = None, high: float | None = None) -> np.ndarray:
    """Linearly map ``array`` from [low, high] (default: its min/max) onto 0..255 uint8.

    A constant image maps to zeros rather than dividing by zero.
    """
    array = np.asarray(array)
    if array.dtype == np.uint8 and low is None and high is None:
        return array
    values = array.astype(np.float32, copy=False)
    finite = np.isfinite(values)
    if not finite.all():
        values = np.where(finite, values, 0.0)
    lo = float(values.min()) if low is None else float(low)
    hi = float(values.max()) if high is None else float(high)
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def rgb_to_grey(array: np.ndarray) -> np.ndarray:
    """HxWx3 (or x4, alpha composited on black) to HxW with ITU-R 601 luma weights, same scale."""
    array = np.asarray(array)
    values = array[..., :3].astype(np.float32)
    grey = values @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if array.shape[-1] == 4:
        alpha = array[..., 3].astype(np.float32)
        grey = grey * (alpha / (255.0 if array.dtype == np.uint8 else max(float(alpha.max()), 1.0)))
    return grey


def pil_to_grey(image: Image.Image) -> Image.Image:
    """Any PIL mode to an 8-bit grey ("L") image, following the rules in the module docstring."""
    mode = image.mode
    if mode == "L":
        return image
    if mode in ("1", "RGB", "YCbCr"):
        return image.convert("L")
    if mode in ("CMYK", "LAB", "HSV"):
        return image.convert("RGB").convert("L")
    if mode == "P":
        # A palette may carry transparency; go through RGBA so it is composited like RGBA.
        return pil_to_grey(image.convert("RGBA") if "transparency" in image.info else image.convert("RGB"))
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = np.asarray(image.convert("RGBA"))
        if rgba[..., 3].min() == 255:  # opaque: the alpha channel carries nothing
            return image.convert("L")
        return Image.fromarray(array_to_uint8(rgb_to_grey(rgba), 0, 255))
    if mode.startswith("I") or mode == "F":
        array = np.asarray(image)
        if array.ndim == 3:
            array = rgb_to_grey(array)
        return Image.fromarray(array_to_uint8(array))
    return image.convert("L")


def square_resize(image: Image.Image, size: int) -> np.ndarray:
    """Pad a grey PIL image to a centred black square, then resize to ``size`` x ``size`` (uint8)."""
    width, height = image.size
    if width == height:
        if width != size:
            image = image.resize((size, size), RESAMPLE)
    else:
        image = ImageOps.pad(image, (size, size), method=RESAMPLE, color=0, centering=(0.5, 0.5))
    return np.array(image, dtype=np.uint8)  # a writable copy (torch.from_numpy needs one)


def array_square_resize(array: np.ndarray, size: int) -> np.ndarray:
    """Same as :func:`square_resize` for a 2-D array (any dtype, scaled by its min/max unless uint8)."""
    return square_resize(Image.fromarray(array_to_uint8(array)), size)


def open_image(source, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open a path or bytes with PIL, refusing pictures above ``max_pixels`` before decoding them."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(source)
    except Image.DecompressionBombError as exc:
        raise InputError(f"image is too large to decode safely ({exc})") from exc
    except Image.DecompressionBombWarning as exc:
        raise InputError(f"image is too large to decode safely ({exc})") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # UnidentifiedImageError is an OSError
        raise InputError(f"not a readable image ({exc})") from exc
    width, height = image.size
    if width <= 0 or height <= 0:
        raise InputError("image has zero width or height")
    if width * height > max_pixels:
        raise InputError(
            f"image is {width}x{height} = {width * height:,} pixels, above the limit of {max_pixels:,} "
            "(a guard against decompression bombs); downscale it first")
    return image


def decode_to_square(source, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a file path or bytes (PNG, JPEG, TIFF, BMP, ...) to a uint8 ``size`` x ``size`` array.

    JPEG files are decoded at reduced scale (DCT scaling via ``Image.draft``) when the target is
    at most half the stored size: the result is then resized as usual, and decoding is several
    times faster than a full decode followed by a resize.
    """
    image = open_image(source, max_pixels=max_pixels)
    try:
        if image.format == "JPEG" and image.mode in ("L", "RGB", "YCbCr"):
            # draft keeps both sides >= size, so the later pad+resize still only shrinks.
            image.draft("L", (size, size))
        image.load()
        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)
        return square_resize(pil_to_grey(image), size)
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"cannot decode image: {exc}") from exc
    finally:
        image.close()
