"""The wheel carries every package folder and the experiments."""

import tomllib
from pathlib import Path

from metajax import cli

ROOT = Path(__file__).resolve().parent.parent


def test_pyproject_lists_every_package_folder():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {".".join(p.parent.relative_to(ROOT).parts)
               for p in (ROOT / "metajax").rglob("__init__.py")}
    assert set(config["packages"]) == folders | {"metajax.experiments"}
    assert config["package-dir"] == {"metajax.experiments": "experiments"}


def test_shipped_experiments_are_found_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(cli.ENV_EXPERIMENTS, raising=False)
    found = cli.available_experiments()
    assert {"sinusoid_maml", "omniglot_maml", "fewshot_protonet"} <= set(found)
    assert all(path.parent.resolve() == (ROOT / "experiments").resolve()
               for path in found.values())
