"""Omniglot (Lake et al., 2015) read from the official zips, resized, cached, and split."""

from __future__ import annotations

import io
import os
import random
import tempfile
import urllib.request
import zipfile
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from metajax._src.data.cache import load_or_build
from metajax._src.data.dataset import FewShotDataset, FewShotSplits

ZIPS = ("images_background", "images_evaluation")
SOURCE_SIZE = 105
EXAMPLES_PER_CHARACTER = 20
URLS = {
    "images_background.zip":
        "https://github.com/brendenlake/omniglot/raw/master/python/images_background.zip",
    "images_evaluation.zip":
        "https://github.com/brendenlake/omniglot/raw/master/python/images_evaluation.zip",
}
SPLIT_URL = ("https://raw.githubusercontent.com/jakesnell/prototypical-networks/master/data/"
             "omniglot/splits/vinyals/{split}.txt")
VINYALS_SPLITS = ("train", "val", "test", "trainval")


class OmniglotCharacters(NamedTuple):
    """Every Omniglot character, decoded and resized (no split, no rotation).

    Attributes:
        images: ``uint8 [n_characters, 20, S, S]``: white background (255), dark strokes.
            Background characters come first (sorted by ``Alphabet/characterNN``), then the
            evaluation characters (sorted); images within a character in file-name order.
        names: ``"Alphabet/characterNN"`` per character (alphabet names are unique across the
            two zips).
        n_background: how many characters come from ``images_background.zip`` (964).
        root: the directory holding the zips (and ``splits/``).
        cache_path: the cache file read or written (``None`` if none could be written).
    """

    images: np.ndarray
    names: tuple[str, ...]
    n_background: int
    root: str
    cache_path: str | None


def _resolve_dir(root: str | os.PathLike | None) -> Path:
    """Finds the directory with the Omniglot zips: ``root``, else ``$METAJAX_DATA``."""
    if root is not None:
        bases, origin = [Path(root)], "the `root` argument"
    elif os.environ.get("METAJAX_DATA"):
        bases, origin = [Path(os.environ["METAJAX_DATA"])], "$METAJAX_DATA"
    else:
        raise FileNotFoundError(
            "No Omniglot data root given: pass `root=` (a directory holding "
            "omniglot/images_background.zip and omniglot/images_evaluation.zip) or set the "
            "environment variable METAJAX_DATA to that directory, e.g. "
            "`export METAJAX_DATA=/data`. metajax.data.download_omniglot(root) fetches the "
            "official zips.")
    tried = []
    for base in bases:
        for candidate in (base / "omniglot", base):
            if candidate.is_dir() and (candidate.name == "omniglot" or any(
                    (candidate / f"{z}.zip").exists() for z in ZIPS)):
                return candidate
            tried.append(str(candidate))
    raise FileNotFoundError(
        f"Omniglot not found from {origin}: tried {', '.join(tried)}; none holds "
        "images_background.zip / images_evaluation.zip. Point `root=` or METAJAX_DATA at the "
        "directory that contains omniglot/, or fetch the zips with "
        "metajax.data.download_omniglot(root).")


def _zip_path(directory: Path, stem: str) -> Path:
    path = directory / f"{stem}.zip"
    if not path.is_file():
        raise FileNotFoundError(
            f"Omniglot zip file missing: {path}. Expected the official {stem}.zip there "
            f"(download: {URLS[stem + '.zip']}, or metajax.data.download_omniglot).")
    return path


def _decode_image(zf: zipfile.ZipFile, member: str, path: Path, size: int) -> np.ndarray:
    from PIL import Image

    try:
        data = zf.read(member)
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as err:
        raise ValueError(f"Cannot read {member} from {path} ({err}): the zip file is corrupt; "
                         "download it again.") from None
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            width, height = im.size
            gray = im.convert("L")
    except OSError as err:
        raise ValueError(f"{member} in {path} is not a readable image ({err}).") from None
    if (width, height) != (SOURCE_SIZE, SOURCE_SIZE):
        raise ValueError(f"{member} in {path} is {width}x{height}; Omniglot images are "
                         f"{SOURCE_SIZE}x{SOURCE_SIZE}. Is this the official zip?")
    if size != SOURCE_SIZE:
        # Lanczos as in the MAML code's resize script (on grayscale, so it really is Lanczos).
        gray = gray.resize((size, size), resample=Image.LANCZOS)
    return np.asarray(gray, dtype=np.uint8)


def _decode_zip(path: Path, size: int) -> tuple[list[str], np.ndarray]:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise ValueError(f"{path} is not a readable zip file ({err}); it is corrupt or "
                         "truncated. Download it again.") from None
    with zf:
        characters: dict[str, list[str]] = {}
        for info in zf.infolist():
            parts = info.filename.split("/")
            if info.is_dir() or parts[0] == "__MACOSX" or not info.filename.endswith(".png"):
                continue
            if len(parts) != 4 or parts[0] != path.stem:
                raise ValueError(f"{path}: unexpected member {info.filename!r}; the official "
                                 f"layout is {path.stem}/ALPHABET/characterNN/NAME.png.")
            characters.setdefault(f"{parts[1]}/{parts[2]}", []).append(info.filename)
        if not characters:
            raise ValueError(f"{path} holds no PNG images; expected "
                             f"{path.stem}/ALPHABET/characterNN/NAME.png.")
        names = sorted(characters)
        images = np.empty((len(names), EXAMPLES_PER_CHARACTER, size, size), np.uint8)
        for i, name in enumerate(names):
            files = sorted(characters[name])
            if len(files) != EXAMPLES_PER_CHARACTER:
                raise ValueError(f"{path}: character {name} has {len(files)} images; every "
                                 f"Omniglot character has {EXAMPLES_PER_CHARACTER}.")
            for j, member in enumerate(files):
                images[i, j] = _decode_image(zf, member, path, size)
    return names, images


def load_omniglot_characters(
    root: str | os.PathLike | None = None,
    *,
    image_size: int = 28,
    cache_dir: str | os.PathLike | None = None,
) -> OmniglotCharacters:
    """Decodes every Omniglot character from the official zips, through a cache.

    The zips are read directly (no extraction); each 105x105 image is resized to
    ``image_size`` with Lanczos resampling (Pillow). The result is cached as one ``.npz``
    (about 25 MB at 28x28) in the user's cache directory (``cache_dir``, else
    ``$METAJAX_CACHE``, else ``~/.cache/metajax``; a cache already next to the zips is read,
    but the data folder is never written); the cache is written atomically and checked
    (source fingerprint, SHA-256, shapes) on every load, and rebuilt with a warning if corrupt
    or stale.

    Note: the MAML code called ``resize(..., Image.LANCZOS)`` on the 1-bit PNGs, for which
    Pillow silently uses nearest-neighbour; here the images are converted to 8-bit grayscale
    first, so the result is a true (anti-aliased) Lanczos resize.

    Args:
        root: directory holding ``omniglot/`` (or the ``omniglot`` directory itself);
            default ``$METAJAX_DATA``.
        image_size: output side length (28 in most papers).
        cache_dir: write and read the cache only there.

    Raises:
        FileNotFoundError: no data root, or a zip missing (the message names the paths).
        ValueError: a corrupt zip, an image that is not 105x105, a character without 20
            images.

    Examples:
        >>> chars = load_omniglot_characters("/data")  # doctest: +SKIP
        >>> chars.images.shape, chars.n_background  # doctest: +SKIP
        ((1623, 20, 28, 28), 964)
    """
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"`image_size` must be a positive int; got {image_size!r}.")
    directory = _resolve_dir(root)
    zips = [_zip_path(directory, stem) for stem in ZIPS]
    fingerprint = {"dataset": "omniglot", "image_size": image_size, "resample": "lanczos",
                   "zips": [[p.name, p.stat().st_size] for p in zips]}

    def build():
        names, images = [], []
        for path in zips:
            n, im = _decode_zip(path, image_size)
            names.append(n)
            images.append(im)
        return {"images": np.concatenate(images), "names": np.asarray(names[0] + names[1]),
                "n_background": np.asarray(len(names[0]))}

    def validate(arrays):
        images, names = arrays["images"], arrays["names"]
        if (images.dtype != np.uint8 or images.ndim != 4 or
                images.shape[1:] != (EXAMPLES_PER_CHARACTER, image_size, image_size) or
                names.shape != (images.shape[0],)):
            return f"it holds arrays of unexpected shape {images.shape} / {names.shape}"
        return None

    arrays, cache_path = load_or_build(build, filename=f"omniglot_{image_size}x{image_size}.npz",
                                       data_dir=directory, cache_dir=cache_dir,
                                       fingerprint=fingerprint, validate=validate)
    return OmniglotCharacters(images=arrays["images"],
                              names=tuple(str(n) for n in arrays["names"]),
                              n_background=int(arrays["n_background"]), root=str(directory),
                              cache_path=None if cache_path is None else str(cache_path))


def omniglot_split_from_file(characters: OmniglotCharacters, split_file: str | os.PathLike, *,
                             name: str | None = None) -> FewShotDataset:
    """Builds the classes listed in a Vinyals-style split file (character x rotation).

    Each line ``Alphabet/characterNN/rotDDD`` is one class: the character's 20 images
    rotated counter-clockwise by DDD degrees (``np.rot90``; DDD a multiple of 90).

    Args:
        characters: from :func:`load_omniglot_characters`.
        split_file: path of the split file.
        name: the dataset name (default: ``omniglot/<file stem>``).

    Raises:
        FileNotFoundError: the split file does not exist.
        ValueError: a malformed line, a class listed twice, or a character that is not in
            ``characters`` (named, with the file and line).
    """
    split_file = Path(split_file)
    if not split_file.is_file():
        raise FileNotFoundError(f"Omniglot split file not found: {split_file}.")
    index = {n: i for i, n in enumerate(characters.names)}
    entries, seen = [], {}
    for lineno, line in enumerate(split_file.read_text().splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        char, sep, rot = line.rpartition("/")
        digits = rot[3:]
        if not sep or not rot.startswith("rot") or not digits.isdigit() or int(digits) % 90:
            raise ValueError(f"{split_file}:{lineno}: {line!r} is not of the form "
                             "Alphabet/characterNN/rotDDD with DDD a multiple of 90.")
        if char not in index:
            raise ValueError(
                f"{split_file}:{lineno}: character {char!r} is not in the Omniglot data loaded "
                f"from {characters.root} ({len(index)} characters). Check the split file and "
                "the data root.")
        key = (char, int(digits) // 90 % 4)
        if key in seen:
            raise ValueError(f"{split_file}:{lineno}: {line!r} repeats the class of line "
                             f"{seen[key]}; each class once.")
        seen[key] = lineno
        entries.append((line, index[char], key[1]))
    if not entries:
        raise ValueError(f"Omniglot split file {split_file} lists no classes.")
    size = characters.images.shape[-1]
    images = np.empty((len(entries), characters.images.shape[1], size, size, 1), np.uint8)
    for i, (_, char, k) in enumerate(entries):
        images[i, ..., 0] = np.rot90(characters.images[char], k, axes=(1, 2))
    return FewShotDataset(images=images, name=name or f"omniglot/{split_file.stem}",
                          classes=tuple(e[0] for e in entries))


def omniglot_maml_split(characters: OmniglotCharacters, *, num_train: int = 1200,
                        num_val: int = 0, shuffle_seed: int | None = None) -> FewShotSplits:
    """The MAML split: the first ``num_train`` characters for training, the rest for test.

    Characters of both zips are ordered by ``Alphabet/characterNN``, as in the single
    merged folder of the MAML code. The MAML code shuffled its ``os.listdir`` order with
    ``random.seed(1)``; ``shuffle_seed=1`` applies that shuffle to the sorted order (the
    listing order of the original run cannot be recovered). Classes are characters without
    rotation: sample episodes with ``episodes(..., rotate=True)`` for the per-task rotation
    by a multiple of 90 degrees of MAML.

    Args:
        characters: from :func:`load_omniglot_characters`.
        num_train: characters for meta-training, validation included (1200).
        num_val: the last ``num_val`` of those become the validation split (the MAML code
            used 100, training on 1100); ``0`` gives ``val=None``.
        shuffle_seed: shuffle the order first with ``random.Random(shuffle_seed)``.

    Raises:
        ValueError: if ``num_train`` or ``num_val`` leave a split empty.
    """
    n = len(characters.names)
    if not isinstance(num_train, int) or not 0 < num_train < n:
        raise ValueError(f"`num_train` must be an int in [1, {n - 1}]; got {num_train!r}.")
    if not isinstance(num_val, int) or not 0 <= num_val < num_train:
        raise ValueError(f"`num_val` must be an int in [0, num_train); got {num_val!r}.")
    order = sorted(range(n), key=characters.names.__getitem__)
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(order)
    parts = {"train": order[:num_train - num_val], "val": order[num_train - num_val:num_train],
             "test": order[num_train:]}

    def subset(split, idx):
        if not idx:
            return None
        return FewShotDataset(images=characters.images[np.asarray(idx)][..., None],
                              name=f"omniglot/maml/{split}",
                              classes=tuple(characters.names[i] for i in idx))

    return FewShotSplits(**{k: subset(k, v) for k, v in parts.items()})


def omniglot(
    root: str | os.PathLike | None = None,
    *,
    split: str = "vinyals",
    image_size: int = 28,
    cache_dir: str | os.PathLike | None = None,
    splits_dir: str | os.PathLike | None = None,
    num_train: int = 1200,
    num_val: int = 0,
    shuffle_seed: int | None = None,
) -> FewShotSplits:
    """Loads Omniglot as few-shot ``train``/``val``/``test`` class sets.

    ``split="vinyals"``: the Vinyals et al. (2016) split used by Prototypical Networks,
    read from ``splits/{train,val,test}.txt`` next to the zips: 1028/172/423 characters,
    each in 4 rotations as separate classes (4112/688/1692 classes of 20 images).
    ``split="maml"``: see :func:`omniglot_maml_split` (1200 training characters, 423 test,
    no rotation classes; rotate per task in the sampler).

    Args:
        root: directory holding ``omniglot/``; default ``$METAJAX_DATA``.
        split: ``"vinyals"`` or ``"maml"``.
        image_size: image side after resizing (28).
        cache_dir: where to keep the decoded-image cache (default: ``$METAJAX_CACHE``,
            else ``~/.cache/metajax``; never the data folder).
        splits_dir: directory of the Vinyals split files (default ``<root>/omniglot/splits``).
        num_train, num_val, shuffle_seed: the MAML split's options.

    Returns:
        :class:`FewShotSplits` of :class:`FewShotDataset` with images
        ``uint8 [n_classes, 20, S, S, 1]`` (white background; ``episodes(..., invert=True)``
        gives strokes = 1 as in the MAML code).

    Examples:
        >>> splits = omniglot("/data")  # doctest: +SKIP
        >>> splits.train.images.shape  # doctest: +SKIP
        (4112, 20, 28, 28, 1)
    """
    if split not in ("vinyals", "maml"):
        raise ValueError(f"`split` must be 'vinyals' or 'maml'; got {split!r}.")
    characters = load_omniglot_characters(root, image_size=image_size, cache_dir=cache_dir)
    if split == "maml":
        return omniglot_maml_split(characters, num_train=num_train, num_val=num_val,
                                   shuffle_seed=shuffle_seed)
    directory = Path(splits_dir) if splits_dir is not None else Path(characters.root) / "splits"
    parts = [omniglot_split_from_file(characters, directory / f"{s}.txt",
                                      name=f"omniglot/vinyals/{s}")
             for s in ("train", "val", "test")]
    _check_disjoint(directory, parts)
    return FewShotSplits(*parts)


def _check_disjoint(directory: Path, parts: list[FewShotDataset]) -> None:
    """Refuses splits that share a character (with any rotation): test classes must be new."""
    owner: dict[str, tuple[str, int]] = {}
    for split, ds in zip(("train", "val", "test"), parts, strict=True):
        path = directory / f"{split}.txt"
        lines = [ln.strip() for ln in path.read_text().splitlines()]
        for cls in ds.classes:
            char = cls.rpartition("/")[0]
            lineno = lines.index(cls) + 1
            if char in owner and owner[char][0] != split:
                first, first_line = owner[char]
                raise ValueError(f"{path}:{lineno}: character {char!r} is also in the "
                                 f"{first} split ({directory / f'{first}.txt'}:{first_line}); "
                                 "train, validation and test characters must differ.")
            owner.setdefault(char, (split, lineno))


def _fetch(url: str, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=60) as response:
            while chunk := response.read(1 << 20):
                f.write(chunk)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def download_omniglot(root: str | os.PathLike) -> Path:
    """Downloads the official Omniglot zips and the Vinyals split files into ``root/omniglot``.

    Zips come from github.com/brendenlake/omniglot (``python/``), split files from the
    Prototypical Networks repository. Files already present are kept. Never called by the
    tests; the loaders never download.

    Returns:
        The ``omniglot`` directory.
    """
    directory = Path(root) / "omniglot"
    (directory / "splits").mkdir(parents=True, exist_ok=True)
    targets = {directory / name: url for name, url in URLS.items()}
    targets.update({directory / "splits" / f"{s}.txt": SPLIT_URL.format(split=s)
                    for s in VINYALS_SPLITS})
    for path, url in targets.items():
        if not path.exists():
            _fetch(url, path)
    return directory
