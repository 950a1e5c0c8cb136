"""mini-ImageNet (Vinyals et al., 2016) with the Ravi & Larochelle (2017) split CSVs."""

from __future__ import annotations

import csv
import hashlib
import os
from pathlib import Path

import numpy as np

from metajax._src.data.cache import load_or_build
from metajax._src.data.dataset import FewShotDataset, FewShotSplits

SPLITS = ("train", "val", "test")


def _read_csv(path: Path) -> tuple[list[str], dict[str, list[str]]]:
    """Returns ``(labels in first-seen order, {label: filenames in CSV order})``."""
    if not path.is_file():
        raise FileNotFoundError(f"mini-ImageNet split file not found: {path} (expected the "
                                "Ravi & Larochelle CSVs train.csv, val.csv, test.csv).")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or [c.strip() for c in rows[0]] != ["filename", "label"]:
        raise ValueError(f"{path}: the first line must be the header 'filename,label'; got "
                         f"{','.join(rows[0]) if rows else 'an empty file'!r}.")
    by_label: dict[str, list[str]] = {}
    for lineno, row in enumerate(rows[1:], 2):
        if not row:
            continue
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise ValueError(f"{path}:{lineno}: expected 'filename,label'; got {row!r}.")
        by_label.setdefault(row[1].strip(), []).append(row[0].strip())
    if not by_label:
        raise ValueError(f"{path} lists no images.")
    counts = {label: len(files) for label, files in by_label.items()}
    if len(set(counts.values())) != 1:
        label, n = min(counts.items(), key=lambda kv: kv[1])
        raise ValueError(f"{path}: classes have different numbers of images (class {label} "
                         f"has {n}, others up to {max(counts.values())}); a few-shot dataset "
                         "needs the same number per class.")
    return list(by_label), by_label


def _image_dir(root_images: Path) -> Path:
    if not root_images.is_dir():
        raise FileNotFoundError(f"mini-ImageNet image folder not found: {root_images}.")
    nested = root_images / "images"
    return nested if nested.is_dir() else root_images


def _load_image(path: Path, size: int, allow_upscale: bool) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            rgb = im.convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"mini-ImageNet image missing: {path}.") from None
    except OSError as err:
        raise ValueError(f"{path} is not a readable image ({err}).") from None
    width, height = rgb.size
    if not allow_upscale and min(width, height) < size:
        raise ValueError(f"{path} is {width}x{height}, smaller than the target {size}x{size}: "
                         "wrong image folder (thumbnails?). Pass allow_upscale=True to enlarge "
                         "small images anyway.")
    if (width, height) != (size, size):
        rgb = rgb.resize((size, size), resample=Image.LANCZOS)  # as Ravi & Larochelle's script
    return np.asarray(rgb, dtype=np.uint8)


def _load_split(split: str, csv_path: Path, root: Path, image_dir: Path, *, image_size: int,
                cache_dir, allow_upscale: bool) -> FewShotDataset:
    labels, by_label = _read_csv(csv_path)
    files = [image_dir / f for label in labels for f in by_label[label]]
    missing = [p for p in files if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of the {len(files)} images listed in {csv_path} are missing from "
            f"{image_dir}, e.g. {missing[0]}.")
    fingerprint = {
        "dataset": "mini_imagenet", "split": split, "image_size": image_size,
        "csv_sha256": hashlib.sha256(csv_path.read_bytes()).hexdigest(),
        "image_dir": str(image_dir.resolve()),
        "image_bytes": sum(p.stat().st_size for p in files),
    }
    n_per = len(by_label[labels[0]])

    def build():
        images = np.empty((len(labels), n_per, image_size, image_size, 3), np.uint8)
        for i, path in enumerate(files):
            images[i // n_per, i % n_per] = _load_image(path, image_size, allow_upscale)
        return {"images": images, "labels": np.asarray(labels)}

    def validate(arrays):
        if arrays["images"].shape != (len(labels), n_per, image_size, image_size, 3):
            return f"it holds images of unexpected shape {arrays['images'].shape}"
        return None

    tag = fingerprint["csv_sha256"][:10]
    arrays, _ = load_or_build(build, filename=f"mini_imagenet_{split}_{image_size}px_{tag}.npz",
                              data_dir=root, cache_dir=cache_dir, fingerprint=fingerprint,
                              validate=validate)
    return FewShotDataset(images=arrays["images"], name=f"mini_imagenet/{split}",
                          classes=tuple(str(x) for x in arrays["labels"]))


def mini_imagenet(
    root_images: str | os.PathLike,
    splits_dir: str | os.PathLike,
    *,
    splits: tuple[str, ...] = SPLITS,
    image_size: int = 84,
    cache_dir: str | os.PathLike | None = None,
    allow_upscale: bool = False,
) -> FewShotSplits:
    """Loads mini-ImageNet from your own copy of the images and the Ravi & Larochelle CSVs.

    Images are looked up as ``root_images/images/<filename>`` (or ``root_images/<filename>``
    when there is no ``images/`` folder), converted to RGB and resized to ``image_size``
    squared with Lanczos resampling (as Ravi & Larochelle's script). Classes are the CSV's
    labels in order of first appearance, images in CSV order. Each split is cached as
    ``uint8`` in one ``.npz`` in the user's cache directory (``$METAJAX_CACHE``, else
    ``~/.cache/metajax``; never the data folder), written atomically, checked on every load
    and rebuilt with a warning when corrupt or stale. The full training split is about 0.8 GB
    in memory.

    Args:
        root_images: the folder with the images (see above).
        splits_dir: the folder with ``train.csv``, ``val.csv``, ``test.csv``
            (header ``filename,label``).
        splits: which splits to load; the others are ``None``.
        image_size: output side length (84).
        cache_dir: where to keep the caches instead.
        allow_upscale: accept images smaller than ``image_size`` (otherwise an error: a
            folder of thumbnails is usually a mistake).

    Returns:
        :class:`FewShotSplits` with images ``uint8 [n_classes, n_per_class, S, S, 3]``.

    Raises:
        FileNotFoundError: the image folder, a CSV or an image is missing (named).
        ValueError: a malformed CSV, unequal class sizes, an unreadable or too-small image.

    Examples:
        >>> data = mini_imagenet("/data/mini", "/data/mini_splits")  # doctest: +SKIP
        >>> data.train.images.shape  # doctest: +SKIP
        (64, 600, 84, 84, 3)
    """
    unknown = [s for s in splits if s not in SPLITS]
    if unknown or not splits:
        raise ValueError(f"`splits` must name some of {SPLITS}; got {splits!r}.")
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"`image_size` must be a positive int; got {image_size!r}.")
    root = Path(root_images)
    image_dir = _image_dir(root)
    loaded = {s: _load_split(s, Path(splits_dir) / f"{s}.csv", root, image_dir,
                             image_size=image_size, cache_dir=cache_dir,
                             allow_upscale=allow_upscale) for s in splits}
    return FewShotSplits(**{s: loaded.get(s) for s in SPLITS})
