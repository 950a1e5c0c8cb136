"""The tutorials' code runs as written (each page in a fresh namespace)."""

import re
from pathlib import Path

import pytest
from omniglot_data import require_omniglot

TUTORIALS = Path(__file__).resolve().parent.parent / "docs" / "tutorials"
PAGES = sorted(p.name for p in TUTORIALS.glob("*.md"))


def _blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (TUTORIALS / page).read_text(), flags=re.S)


@pytest.mark.parametrize("page", [pytest.param(p, marks=pytest.mark.slow) if p == "omniglot.md"
                                  else p for p in PAGES])
def test_tutorial_code_runs(page, monkeypatch):
    blocks = _blocks(page)
    if page == "devices-and-processes.md":  # multi-process code: shown, run by test_processes
        assert not blocks
        return
    assert blocks, f"{page} has no Python example"
    if page == "omniglot.md":
        monkeypatch.setenv("METAJAX_DATA", str(require_omniglot()))
    namespace: dict = {}  # one per page: a page's blocks continue each other
    for block in blocks:
        exec(compile(block, page, "exec"), namespace)  # noqa: S102
