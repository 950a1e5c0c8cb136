"""mini-ImageNet loader on small synthetic images written in the Ravi & Larochelle layout."""

from __future__ import annotations

import numpy as np
import pytest
from omniglot_data import SHARED_DATA
from PIL import Image

from metajax import data
from metajax._src.data import mini_imagenet as mini_impl

TRAIN = {"n01": 4, "n02": 4}
TEST = {"n03": 4}


def _write_split(splits_dir, images_dir, split, classes, rng, size=(100, 90)):
    lines = ["filename,label"]
    for label, n in classes.items():
        for i in range(n):
            name = f"{label}{i:08d}.png"
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(images_dir / name)
            lines.append(f"{name},{label}")
    (splits_dir / f"{split}.csv").write_text("\n".join(lines) + "\n")


@pytest.fixture
def mini(tmp_path):
    """``(root, splits_dir)``: root/images/*.png (3 classes x 4 images, 100x90 RGB)."""
    rng = np.random.default_rng(0)
    root, splits_dir = tmp_path / "mini", tmp_path / "splits"
    (root / "images").mkdir(parents=True)
    splits_dir.mkdir()
    _write_split(splits_dir, root / "images", "train", TRAIN, rng)
    _write_split(splits_dir, root / "images", "test", TEST, rng)
    return root, splits_dir


def test_loads_resizes_and_caches(mini, monkeypatch, tmp_path):
    root, splits_dir = mini
    monkeypatch.setenv("METAJAX_CACHE", str(tmp_path / "cache"))
    splits = data.mini_imagenet(root, splits_dir, splits=("train", "test"))
    assert splits.val is None
    assert splits.train.images.shape == (2, 4, 84, 84, 3)
    assert splits.train.images.dtype == np.uint8
    assert splits.train.classes == ("n01", "n02") and splits.test.classes == ("n03",)
    assert splits.train.name == "mini_imagenet/train"
    with Image.open(root / "images" / "n0200000003.png") as im:
        expected = np.asarray(im.convert("RGB").resize((84, 84), Image.LANCZOS))
    np.testing.assert_array_equal(splits.train.images[1, 3], expected)
    assert not list(root.glob("mini_imagenet_*.npz"))  # the data folder is not written
    caches = sorted(p.name for p in (tmp_path / "cache").glob("mini_imagenet_*.npz"))
    assert len(caches) == 2 and caches[0].startswith("mini_imagenet_test_84px_")

    def fail(*args, **kwargs):
        raise AssertionError("images decoded again although a valid cache exists")

    monkeypatch.setattr(mini_impl, "_load_image", fail)
    again = data.mini_imagenet(root, splits_dir, splits=("train",))
    np.testing.assert_array_equal(again.train.images, splits.train.images)


def test_flat_folder_and_cache_dir(mini, tmp_path):
    root, splits_dir = mini
    splits = data.mini_imagenet(root / "images", splits_dir, splits=("test",), image_size=32,
                                cache_dir=tmp_path / "cache")
    assert splits.test.images.shape == (1, 4, 32, 32, 3)
    assert len(list((tmp_path / "cache").glob("mini_imagenet_test_32px_*.npz"))) == 1


def test_missing_image_names_path(mini):
    root, splits_dir = mini
    missing = root / "images" / "n0100000002.png"
    missing.unlink()
    with pytest.raises(FileNotFoundError, match="1 of the 8 images") as err:
        data.mini_imagenet(root, splits_dir, splits=("train",))
    assert str(missing) in str(err.value)


def test_too_small_image_is_an_error_unless_allowed(mini, tmp_path):
    root, splits_dir = mini
    small = root / "images" / "n0300000001.png"
    Image.fromarray(np.zeros((50, 60, 3), np.uint8)).save(small)
    with pytest.raises(ValueError, match="60x50, smaller than the target 84x84") as err:
        data.mini_imagenet(root, splits_dir, splits=("test",))
    assert str(small) in str(err.value) and "allow_upscale" in str(err.value)
    splits = data.mini_imagenet(root, splits_dir, splits=("test",), allow_upscale=True,
                                cache_dir=tmp_path / "c")
    assert splits.test.images.shape == (1, 4, 84, 84, 3)


def test_csv_errors(mini, tmp_path):
    root, splits_dir = mini
    with pytest.raises(FileNotFoundError, match="val.csv"):
        data.mini_imagenet(root, splits_dir, splits=("val",))
    (splits_dir / "val.csv").write_text("file,class\nx.png,n09\n")
    with pytest.raises(ValueError, match="header 'filename,label'"):
        data.mini_imagenet(root, splits_dir, splits=("val",))
    lines = (splits_dir / "train.csv").read_text().splitlines()
    (splits_dir / "val.csv").write_text("\n".join(lines[:-1]) + "\n")  # n02 loses one image
    with pytest.raises(ValueError, match="class n02 has 3"):
        data.mini_imagenet(root, splits_dir, splits=("val",))
    with pytest.raises(ValueError, match="`splits`"):
        data.mini_imagenet(root, splits_dir, splits=("validation",))
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        data.mini_imagenet(tmp_path / "nowhere", splits_dir)


def test_real_split_csvs_parse():
    splits_dir = SHARED_DATA / "miniimagenet_splits"
    if not (splits_dir / "train.csv").is_file():
        pytest.skip(f"mini-ImageNet split CSVs not found at {splits_dir}")
    sizes = {}
    for split in ("train", "val", "test"):
        labels, by_label = mini_impl._read_csv(splits_dir / f"{split}.csv")
        sizes[split] = (len(labels), {len(v) for v in by_label.values()})
    assert sizes == {"train": (64, {600}), "val": (16, {600}), "test": (20, {600})}
