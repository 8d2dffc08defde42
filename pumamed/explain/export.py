"""Exports for slides and papers: a labelled PNG grid and an animated GIF of one traversal.

Pure Pillow, no plotting library: the files are pixel-exact copies of the decoded images
(nearest-neighbour upscaling, so no smoothing invents detail the model did not produce).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pumamed.errors import InputError

BACKGROUND = 255  # white margins print well on slides


def to_uint8(image) -> np.ndarray:
    """A float image in [0, 1] (values outside are clipped) as uint8 grey levels."""
    array = np.asarray(image, dtype=np.float32)
    if not np.isfinite(array).all():
        array = np.nan_to_num(array, nan=0.0, posinf=1.0, neginf=0.0)
    return (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def grid_image(images, row_labels=None, column_labels=None, scale: int = 2, pad: int = 4,
               title: str | None = None) -> Image.Image:
    """A k x m grid of grey images (array k x m x S x S) with optional row/column labels."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[0] == 0 or images.shape[1] == 0:
        raise InputError(f"a grid needs a k x m x S x S array of images (got shape {images.shape})")
    k, m, height, width = images.shape
    scale = max(1, int(scale))
    cell_h, cell_w = height * scale, width * scale
    font_size = max(10, min(18, cell_h // 6))
    font = _font(font_size)
    measure = ImageDraw.Draw(Image.new("L", (1, 1)))

    def text_width(text: str) -> int:
        box = measure.textbbox((0, 0), text, font=font)
        return box[2] - box[0]

    left = (max(text_width(t) for t in row_labels) + 2 * pad) if row_labels else 0
    top = (font_size + 2 * pad) if column_labels else 0
    title_h = (font_size + 2 * pad) if title else 0
    canvas = Image.new(
        "L", (left + m * (cell_w + pad) + pad, title_h + top + k * (cell_h + pad) + pad), BACKGROUND
    )
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, pad), title, fill=0, font=font)
    for j, label in enumerate(column_labels or []):
        x = left + pad + j * (cell_w + pad) + (cell_w - text_width(label)) // 2
        draw.text((x, title_h + pad), label, fill=0, font=font)
    for i in range(k):
        y = title_h + top + pad + i * (cell_h + pad)
        if row_labels:
            draw.text((pad, y + (cell_h - font_size) // 2), row_labels[i], fill=0, font=font)
        for j in range(m):
            tile = Image.fromarray(to_uint8(images[i, j]), mode="L")
            if scale > 1:
                tile = tile.resize((cell_w, cell_h), Image.Resampling.NEAREST)
            canvas.paste(tile, (left + pad + j * (cell_w + pad), y))
    return canvas


def grid_png(images, row_labels=None, column_labels=None, scale: int = 2, title: str | None = None) -> bytes:
    """The grid of :func:`grid_image` encoded as PNG bytes (for ``st.download_button``)."""
    buffer = io.BytesIO()
    grid_image(images, row_labels, column_labels, scale=scale, title=title).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def image_png(image, scale: int = 1) -> bytes:
    """One grey image as PNG bytes."""
    tile = Image.fromarray(to_uint8(image), mode="L")
    if scale > 1:
        tile = tile.resize((tile.width * scale, tile.height * scale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    tile.save(buffer, format="PNG")
    return buffer.getvalue()


def traversal_gif(frames, duration_ms: int = 120, scale: int = 2, bounce: bool = True, loop: int = 0,
                  label: str | None = None, frame_labels=None) -> bytes:
    """An animated GIF of ``frames`` (n x S x S). ``bounce`` plays forward then back so the loop
    has no jump; ``loop=0`` repeats forever. Optional caption and per-frame labels (e.g. the sd)."""
    frames = np.asarray(frames)
    if frames.ndim != 3 or frames.shape[0] < 2:
        raise InputError(f"an animation needs at least 2 frames of S x S (got shape {frames.shape})")
    order = list(range(frames.shape[0]))
    if bounce:
        order += order[-2:0:-1]
    scale = max(1, int(scale))
    height, width = frames.shape[1] * scale, frames.shape[2] * scale
    caption_h = 0
    font = None
    if label or frame_labels:
        font_size = max(10, min(16, height // 8))
        font = _font(font_size)
        caption_h = font_size + 6
    pictures = []
    for index in order:
        tile = Image.fromarray(to_uint8(frames[index]), mode="L")
        if scale > 1:
            tile = tile.resize((width, height), Image.Resampling.NEAREST)
        if caption_h:
            canvas = Image.new("L", (width, height + caption_h), BACKGROUND)
            canvas.paste(tile, (0, caption_h))
            text = " ".join(t for t in (label, frame_labels[index] if frame_labels else None) if t)
            ImageDraw.Draw(canvas).text((3, 2), text, fill=0, font=font)
            tile = canvas
        pictures.append(tile)
    buffer = io.BytesIO()
    pictures[0].save(buffer, format="GIF", save_all=True, append_images=pictures[1:],
                     duration=int(duration_ms), loop=int(loop), optimize=False, disposal=1)
    return buffer.getvalue()


# ---------------------------------------------------------------- colour panels for the page
def colour_lut(name: str = "Inferno") -> np.ndarray:
    """A 256 x 3 uint8 lookup table interpolated from a named plotly colour scale (``gray`` is
    the identity), so maps on the page and in exports use the same colours as the plots."""
    if name.lower() in ("gray", "grey"):
        ramp = np.arange(256, dtype=np.uint8)
        return np.stack([ramp] * 3, axis=1)
    from plotly.colors import get_colorscale, hex_to_rgb, unlabel_rgb

    stops = get_colorscale(name)
    positions = np.array([float(p) for p, _ in stops])
    colours = np.array([hex_to_rgb(c) if c.startswith("#") else unlabel_rgb(c) for _, c in stops], dtype=float)
    grid = np.linspace(0.0, 1.0, 256)
    return np.stack([np.interp(grid, positions, colours[:, k]) for k in range(3)], axis=1).round().astype(np.uint8)


def colourize(array, cmap: str = "gray", vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """H x W float array -> H x W x 3 uint8 through ``cmap`` over [vmin, vmax] (clipped)."""
    array = np.nan_to_num(np.asarray(array, dtype=np.float32), nan=vmin)
    span = float(vmax) - float(vmin)
    scaled = (array - float(vmin)) / (span if span > 0 else 1.0)
    index = (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return colour_lut(cmap)[index]


def overlay(image, heat, cmap: str = "Turbo", alpha: float = 0.5, vmin: float | None = None,
            vmax: float | None = None) -> np.ndarray:
    """A grey image with a colour map of ``heat`` blended on top (H x W x 3 uint8)."""
    heat = np.asarray(heat, dtype=np.float32)
    vmin = float(heat.min()) if vmin is None else vmin
    vmax = float(heat.max()) if vmax is None else vmax
    base = colourize(image, "gray").astype(np.float32)
    top = colourize(heat, cmap, vmin, vmax).astype(np.float32)
    return (base * (1.0 - alpha) + top * alpha + 0.5).astype(np.uint8)


def panel_png(pixels, display: int = 256, colorbar: tuple | None = None) -> bytes:
    """PNG of an H x W (grey, float in [0, 1]) or H x W x 3 (uint8) panel, upscaled with
    nearest-neighbour to about ``display`` px. ``colorbar=(cmap, vmin, vmax)`` adds a labelled
    colour strip underneath so the map can be read without a plotting library."""
    pixels = np.asarray(pixels)
    if pixels.ndim == 2:
        pixels = colourize(pixels, "gray") if pixels.dtype != np.uint8 else np.stack([pixels] * 3, axis=2)
    height, width = pixels.shape[:2]
    scale = max(1, int(round(display / max(height, width))))
    tile = Image.fromarray(pixels, mode="RGB")
    if scale > 1:
        tile = tile.resize((width * scale, height * scale), Image.Resampling.NEAREST)
    if colorbar is not None:
        cmap, vmin, vmax = colorbar
        font_size = max(10, tile.width // 18)
        font = _font(font_size)
        strip_h = max(6, tile.width // 28)
        canvas = Image.new("RGB", (tile.width, tile.height + strip_h + font_size + 8), (255, 255, 255))
        canvas.paste(tile, (0, 0))
        strip = colour_lut(cmap)[np.linspace(0, 255, tile.width).astype(int)][None].repeat(strip_h, axis=0)
        canvas.paste(Image.fromarray(strip, mode="RGB"), (0, tile.height + 2))
        draw = ImageDraw.Draw(canvas)
        y = tile.height + strip_h + 4
        low, high = f"{vmin:.3g}", f"{vmax:.3g}"
        draw.text((1, y), low, fill=(0, 0, 0), font=font)
        box = draw.textbbox((0, 0), high, font=font)
        draw.text((tile.width - (box[2] - box[0]) - 2, y), high, fill=(0, 0, 0), font=font)
        tile = canvas
    buffer = io.BytesIO()
    tile.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
