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
    grid_image(images, row_labels, column_labels, scale=scale, title=title).save(buffer, format="PNG", optimize=True)
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
