"""File readers shared by the loaders: images, panoptic PNGs and label PNGs, with errors naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from m2f_trainer.data.staging import join, stage
from m2f_trainer.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def resolve(path: str | Path, root_dir: str | Path | None) -> Path:
    """A local path for a path from a spec or annotation file: absolute as is, relative ones under root_dir.

    Either may be a URL (``s3://bucket/prefix``) and the path an archive: those are staged into the
    node's data cache (m2f_trainer.data.staging) and the local copy returned.
    """
    return stage(join(path, root_dir))


def read_json(path: Path, what: str) -> object:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise DataError(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{what} {path} is not readable JSON: {exc}") from None


def _decode_rgb(path: Path, what: str) -> np.ndarray:
    try:
        with Image.open(path) as image:
            image.load()
            # EXIF orientation matters for photos only; label PNGs carry none.
            upright = ImageOps.exif_transpose(image) if what == "image" else image
            return np.array(upright.convert("RGB"))
    except FileNotFoundError:
        raise DataError(f"{what} {path} does not exist") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{what} {path} is corrupt or not an image: {exc}") from None


def read_image(path: Path) -> torch.Tensor:
    """An RGB image as uint8 [3,H,W]."""
    return torch.from_numpy(_decode_rgb(path, "image")).permute(2, 0, 1).contiguous()


def read_panoptic_png(path: Path) -> torch.Tensor:
    """A COCO panoptic PNG as int32 segment ids [H,W] (id = R + 256 G + 256^2 B, 0 = void)."""
    rgb = _decode_rgb(path, "panoptic PNG").astype(np.int32)
    return torch.from_numpy(rgb[..., 0] | (rgb[..., 1] << 8) | (rgb[..., 2] << 16))


def read_label_png(path: Path) -> torch.Tensor:
    """A single-channel label PNG (class id per pixel) as uint8 [H,W]."""
    # Pillow rather than decode_image: palette ("P") PNGs store class ids as palette indices, which
    # a grey conversion would turn into mixed palette colours.
    try:
        with Image.open(path) as image:
            if image.mode not in ("L", "P", "I", "I;16"):
                raise DataError(f"mask {path} has mode {image.mode}; expected a single-channel label PNG")
            array = np.asarray(image)
    except FileNotFoundError:
        raise DataError(f"mask {path} does not exist") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"mask {path} is corrupt or not an image: {exc}") from None
    if array.max(initial=0) > 255:
        raise DataError(f"mask {path} has values above 255; expected 8-bit class ids")
    return torch.from_numpy(array.astype(np.uint8))


def list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
