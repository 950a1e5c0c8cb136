"""Omniglot loader: real-data counts and splits (skipped without the data), cache, errors."""

from __future__ import annotations

import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from omniglot_data import SHARED_DATA, require_omniglot, shared_omniglot, write_fake_omniglot

from metajax import data
from metajax._src.data import cache as data_cache
from metajax._src.data import omniglot as omniglot_impl


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    return shared_omniglot(tmp_path_factory)


@pytest.fixture
def fake_root(tmp_path):
    write_fake_omniglot(tmp_path)
    return tmp_path


def _fail_decode(*args, **kwargs):
    raise AssertionError("the zips were decoded again although a valid cache exists")


# --- real data -------------------------------------------------------------------------------

def test_real_character_counts(real):
    chars, cache_dir, seconds = real
    print(f"\nOmniglot cache build (1623 characters, 32,460 PNGs): {seconds:.1f} s")
    assert chars.images.shape == (964 + 659, 20, 28, 28)
    assert chars.images.dtype == np.uint8
    assert chars.n_background == 964 and len(chars.names) - chars.n_background == 659
    assert len(set(chars.names)) == 1623
    assert chars.names[0] == "Alphabet_of_the_Magi/character01"
    # White background, dark strokes, anti-aliased by the Lanczos resize (grey levels).
    assert np.median(chars.images) == 255 and chars.images.min() < 50
    assert len(np.unique(chars.images[0, 0])) > 2


def test_real_vinyals_split(real):
    _, cache_dir, _ = real
    splits = data.omniglot(SHARED_DATA, cache_dir=cache_dir)
    assert [s.n_classes for s in splits] == [1028 * 4, 172 * 4, 423 * 4]
    assert splits.train.images.shape[1:] == (20, 28, 28, 1)
    assert splits.train.name == "omniglot/vinyals/train"
    train_chars = {c.rsplit("/", 1)[0] for c in splits.train.classes}
    test_chars = {c.rsplit("/", 1)[0] for c in splits.test.classes}
    assert not train_chars & test_chars
    i0 = splits.train.classes.index("Angelic/character01/rot000")
    i90 = splits.train.classes.index("Angelic/character01/rot090")
    np.testing.assert_array_equal(splits.train.images[i90],
                                  np.rot90(splits.train.images[i0], 1, axes=(1, 2)))


def test_real_maml_split(real):
    _, cache_dir, _ = real
    splits = data.omniglot(SHARED_DATA, split="maml", cache_dir=cache_dir)
    assert splits.train.n_classes == 1200 and splits.val is None
    assert splits.test.n_classes == 1623 - 1200
    assert not set(splits.train.classes) & set(splits.test.classes)
    assert list(splits.train.classes) == sorted(splits.train.classes)
    shuffled = data.omniglot(SHARED_DATA, split="maml", cache_dir=cache_dir, num_val=100,
                             shuffle_seed=1)
    assert (shuffled.train.n_classes, shuffled.val.n_classes) == (1100, 100)
    assert shuffled.train.classes != splits.train.classes[:1100]


def test_real_cache_is_reused(real, monkeypatch):
    chars, cache_dir, build_seconds = real
    assert chars.cache_path is not None and chars.cache_path.startswith(str(cache_dir))
    monkeypatch.setattr(omniglot_impl, "_decode_zip", _fail_decode)
    start = time.perf_counter()
    again = data.load_omniglot_characters(SHARED_DATA, cache_dir=cache_dir)
    load_seconds = time.perf_counter() - start
    np.testing.assert_array_equal(again.images, chars.images)
    assert again.names == chars.names and again.cache_path == chars.cache_path
    assert load_seconds < build_seconds


def test_real_split_file_with_missing_character_names_it(real, tmp_path):
    chars, _, _ = real
    split_file = tmp_path / "train.txt"
    split_file.write_text("Angelic/character01/rot000\nKlingon/character07/rot090\n")
    with pytest.raises(ValueError, match=r"train.txt:2: character 'Klingon/character07'"):
        data.omniglot_split_from_file(chars, split_file)


# --- fake zips (no real data needed) ---------------------------------------------------------

def test_fake_zips_load_in_order_and_cache_in_the_cache_dir(fake_root):
    chars = data.load_omniglot_characters(fake_root)
    assert chars.names == ("Alpha/character01", "Alpha/character02", "Beta/character01",
                           "Gamma/character01", "Gamma/character02")
    assert chars.n_background == 3 and chars.images.shape == (5, 20, 28, 28)
    cache_file = Path(chars.cache_path)
    assert cache_file.parent == data_cache.user_cache_dir() and cache_file.is_file()
    assert cache_file.name.startswith("omniglot_28x28-")
    assert [p.name for p in cache_file.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_image_size_and_env_var_root(fake_root, monkeypatch, tmp_path):
    monkeypatch.setenv("METAJAX_DATA", str(fake_root))
    chars = data.load_omniglot_characters(image_size=14, cache_dir=tmp_path / "c")
    assert chars.images.shape == (5, 20, 14, 14)
    assert chars.root == str(fake_root / "omniglot")


def test_no_root_and_no_env_var_explains(monkeypatch):
    monkeypatch.delenv("METAJAX_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match="METAJAX_DATA"):
        data.load_omniglot_characters()


def test_missing_root_lists_paths_tried(tmp_path):
    with pytest.raises(FileNotFoundError, match="tried") as err:
        data.load_omniglot_characters(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere" / "omniglot") in str(err.value)


def test_missing_zip_names_path(fake_root):
    missing = fake_root / "omniglot" / "images_evaluation.zip"
    missing.unlink()
    with pytest.raises(FileNotFoundError, match="zip file missing") as err:
        data.load_omniglot_characters(fake_root)
    assert str(missing) in str(err.value)


def test_corrupt_zip_names_path(fake_root, tmp_path):
    bad = fake_root / "omniglot" / "images_evaluation.zip"
    bad.write_bytes(b"not a zip at all" * 100)
    with pytest.raises(ValueError, match="not a readable zip") as err:
        data.load_omniglot_characters(fake_root, cache_dir=tmp_path / "c")
    assert str(bad) in str(err.value)


def test_wrong_image_size_is_an_error(tmp_path):
    write_fake_omniglot(tmp_path, size=100)
    with pytest.raises(ValueError, match=r"is 100x100; Omniglot images are 105x105"):
        data.load_omniglot_characters(tmp_path)


def test_character_without_20_images_is_an_error(tmp_path):
    write_fake_omniglot(tmp_path, images_per_character=19)
    with pytest.raises(ValueError, match="Alpha/character01 has 19 images"):
        data.load_omniglot_characters(tmp_path)


def test_corrupt_cache_is_rebuilt_with_a_warning(fake_root, tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    first = data.load_omniglot_characters(fake_root, cache_dir=cache_dir)
    path = cache_dir / "omniglot_28x28.npz"
    raw = path.read_bytes()

    path.write_bytes(raw[: len(raw) // 2])  # truncated
    with pytest.warns(RuntimeWarning, match="cannot be read"):
        rebuilt = data.load_omniglot_characters(fake_root, cache_dir=cache_dir)
    np.testing.assert_array_equal(rebuilt.images, first.images)

    # A readable file whose arrays do not match the stored checksum.
    with zipfile.ZipFile(path) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    with np.load(path) as npz:
        images = npz["images"].copy()
    images[0, 0, 0, 0] ^= 0xFF
    np.save(tmp_path / "images.npy", images)
    members["images.npy"] = (tmp_path / "images.npy").read_bytes()
    with zipfile.ZipFile(path, "w") as zf:
        for name, content in members.items():
            zf.writestr(name, content)
    with pytest.warns(RuntimeWarning, match="checksum"):
        rebuilt = data.load_omniglot_characters(fake_root, cache_dir=cache_dir)
    np.testing.assert_array_equal(rebuilt.images, first.images)

    # The rebuilt cache is valid again: read without decoding.
    monkeypatch.setattr(omniglot_impl, "_decode_zip", _fail_decode)
    np.testing.assert_array_equal(
        data.load_omniglot_characters(fake_root, cache_dir=cache_dir).images, first.images)


def test_unwritable_cache_warns_and_still_loads(fake_root, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.warns(RuntimeWarning, match="Could not write the dataset cache"):
        chars = data.load_omniglot_characters(fake_root, cache_dir=blocker / "sub")
    assert chars.cache_path is None and chars.images.shape == (5, 20, 28, 28)


def test_cache_candidates_read_a_cache_by_the_data_write_the_user_dir(tmp_path):
    first, second = data_cache.cache_candidates("x.npz", data_dir=tmp_path, cache_dir=None)
    assert first == tmp_path / "x.npz"
    assert second.parent == data_cache.user_cache_dir() and second.name.startswith("x-")


def test_the_data_folder_is_never_written(fake_root, tmp_path, monkeypatch):
    # even when it is writable (as for root): the cache goes to $METAJAX_CACHE
    monkeypatch.setenv("METAJAX_CACHE", str(tmp_path / "cache"))
    before = sorted(p.name for p in (fake_root / "omniglot").rglob("*"))
    chars = data.load_omniglot_characters(fake_root)
    assert sorted(p.name for p in (fake_root / "omniglot").rglob("*")) == before
    assert chars.cache_path.startswith(str(tmp_path / "cache"))
    again = data.load_omniglot_characters(fake_root)  # read back from there
    assert again.cache_path == chars.cache_path
    np.testing.assert_array_equal(again.images, chars.images)
    assert data_cache.cache_candidates("x.npz", data_dir=tmp_path, cache_dir="/c") == [
        data_cache.Path("/c/x.npz")]


def test_split_file_rotations_and_errors(fake_root, tmp_path):
    chars = data.load_omniglot_characters(fake_root)
    split_file = tmp_path / "mine.txt"
    split_file.write_text("Beta/character01/rot000\nBeta/character01/rot270\n\n")
    ds = data.omniglot_split_from_file(chars, split_file)
    assert ds.name == "omniglot/mine" and ds.images.shape == (2, 20, 28, 28, 1)
    np.testing.assert_array_equal(ds.images[1, ..., 0], np.rot90(chars.images[2], 3, axes=(1, 2)))
    split_file.write_text("Beta/character01/rot045\n")
    with pytest.raises(ValueError, match="multiple of 90"):
        data.omniglot_split_from_file(chars, split_file)
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        data.omniglot_split_from_file(chars, tmp_path / "nope.txt")


def test_maml_split_options(fake_root):
    chars = data.load_omniglot_characters(fake_root)
    splits = data.omniglot_maml_split(chars, num_train=3, num_val=1)
    assert splits.train.classes == ("Alpha/character01", "Alpha/character02")
    assert splits.val.classes == ("Beta/character01",)
    assert splits.test.images.shape == (2, 20, 28, 28, 1)
    with pytest.raises(ValueError, match="`num_train`"):
        data.omniglot_maml_split(chars, num_train=5)
    with pytest.raises(ValueError, match="`num_val`"):
        data.omniglot_maml_split(chars, num_train=3, num_val=3)
    with pytest.raises(ValueError, match="`split`"):
        data.omniglot(fake_root, split="random")


def test_require_omniglot_points_at_shared_data():
    # The real-data tests look exactly where the shared data lives (or skip saying where).
    try:
        root = require_omniglot()
    except pytest.skip.Exception as skip:
        assert "../shared/data/omniglot" in str(skip)
    else:
        assert (root / "omniglot" / "splits" / "val.txt").is_file()


def test_split_files_with_a_repeated_class_or_a_shared_character_are_refused(fake_root,
                                                                             tmp_path):
    chars = data.load_omniglot_characters(fake_root)
    twice = tmp_path / "twice.txt"
    twice.write_text("Alpha/character01/rot000\nBeta/character01/rot000\n"
                     "Alpha/character01/rot360\n")  # rot360 is rot000 again
    with pytest.raises(ValueError, match=rf"{twice}:3: 'Alpha/character01/rot360' repeats the "
                                         r"class of line 1"):
        data.omniglot_split_from_file(chars, twice)
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "train.txt").write_text("Alpha/character01/rot000\nAlpha/character02/rot000\n")
    (splits / "val.txt").write_text("Beta/character01/rot000\n")
    (splits / "test.txt").write_text("Gamma/character01/rot000\nAlpha/character02/rot090\n")
    with pytest.raises(ValueError, match=rf"{splits / 'test.txt'}:2: character "
                                         r"'Alpha/character02' is also in the train split"):
        data.omniglot(fake_root, splits_dir=splits)
    (splits / "test.txt").write_text("Gamma/character01/rot000\nGamma/character02/rot090\n")
    assert data.omniglot(fake_root, splits_dir=splits).test.images.shape[0] == 2
