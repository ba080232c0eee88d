"""Dream videos: frames of a batch of dreams tiled in a grid, upscaled, written as GIF or MP4."""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

__all__ = ["VIDEO_SUFFIXES", "VideoError", "check_video_path", "tile_frames", "write_video"]

VIDEO_SUFFIXES = (".gif", ".mp4")


class VideoError(ValueError):
    """Raised for a video path or format rem-env cannot write."""


def check_video_path(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path, checked to end in ``.gif`` or ``.mp4`` (MP4 needs imageio-ffmpeg).

    Raises:
        VideoError: For another suffix, or ``.mp4`` without imageio and imageio-ffmpeg.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise VideoError(f"cannot write {str(path)!r}: the file must end in .gif or .mp4")
    if suffix == ".mp4":
        try:
            import imageio.v2  # noqa: F401
            import imageio_ffmpeg  # noqa: F401
        except ImportError as err:
            raise VideoError(
                "writing .mp4 needs imageio and imageio-ffmpeg: pip install 'rem-env[video]', "
                "or write a .gif"
            ) from err
    return path


def tile_frames(frames: np.ndarray, scale: int = 1, columns: int | None = None) -> np.ndarray:
    """One image from a batch of frames: a grid, each frame upscaled (nearest neighbour).

    Args:
        frames: (N, H, W, 3) uint8 frames.
        scale: Integer upscaling factor.
        columns: Grid columns (default: ``ceil(sqrt(N))``). Empty cells are black.

    Returns:
        (rows * H * scale, columns * W * scale, 3) uint8; 1-pixel gaps between cells.

    Example:
        >>> tile_frames(np.zeros((3, 2, 2, 3), np.uint8), scale=2).shape
        (9, 9, 3)
    """
    if frames.ndim != 4 or frames.shape[3] != 3:
        raise ValueError(f"frames must be (N, H, W, 3), got {frames.shape}")
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive int, got {scale!r}")
    n, h, w, _ = frames.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    big = frames.repeat(scale, axis=1).repeat(scale, axis=2)  # (N, H*s, W*s, 3)
    hs, ws = h * scale, w * scale
    grid = np.zeros((rows * hs + rows - 1, columns * ws + columns - 1, 3), np.uint8)
    for i in range(n):
        r, c = divmod(i, columns)
        grid[r * (hs + 1) : r * (hs + 1) + hs, c * (ws + 1) : c * (ws + 1) + ws] = big[i]
    return grid


def _captioned(images: Iterable[np.ndarray], caption: str) -> Iterator[np.ndarray]:
    """The images with ``caption`` written on a black band above them (wrapped to their width)."""
    from PIL import Image, ImageDraw

    images = iter(images)
    first = next(images, None)
    if first is None:
        return
    width = first.shape[1]
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines: list[str] = []
    for word in caption.split():
        if lines and measure.textlength(f"{lines[-1]} {word}") <= width - 4:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    band = 12 * len(lines) + 2
    for image in itertools.chain([first], images):
        canvas = Image.new("RGB", (width, image.shape[0] + band))
        canvas.paste(Image.fromarray(image), (0, band))
        draw = ImageDraw.Draw(canvas)
        for i, line in enumerate(lines):
            draw.text((2, 1 + 12 * i), line, fill=(255, 200, 0))
        yield np.asarray(canvas)


def write_video(
    path: str | os.PathLike[str],
    images: Iterable[np.ndarray],
    fps: int = 15,
    caption: str | None = None,
) -> Path:
    """Writes (H, W, 3) uint8 images as a looping GIF (Pillow) or an MP4 (imageio-ffmpeg).

    Args:
        path: Where to write; the suffix picks the format (``.gif`` or ``.mp4``).
        images: The frames, all of one shape; an iterator is consumed as the file is written
            (a GIF keeps only its 8-bit palette frames in memory).
        fps: Frames per second.
        caption: Text written on a band above every frame (e.g. to mark an untrained model).

    Returns:
        The path written.

    Raises:
        VideoError: See :func:`check_video_path`; also for no images.
    """
    path = check_video_path(path)
    frames = _captioned(images, caption) if caption else iter(images)
    first = next(frames, None)
    if first is None:
        raise VideoError("no frames to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".gif":
        from PIL import Image

        Image.fromarray(first).save(
            path,
            save_all=True,
            append_images=(Image.fromarray(frame) for frame in frames),
            duration=max(20, round(1000 / fps)),
            loop=0,
            optimize=False,
        )
    else:
        import imageio.v2 as imageio

        even = [f[: f.shape[0] // 2 * 2, : f.shape[1] // 2 * 2] for f in [first, *frames]]
        imageio.mimwrite(path, even, fps=fps, macro_block_size=1)  # yuv420p wants even sides
    return path
