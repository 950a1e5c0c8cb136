"""The README's first lines and its code examples stay true."""

import re
from pathlib import Path

import jax.numpy as jnp

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_python_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert len(blocks) >= 2  # the quickstart, then the ProtoNet example
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # noqa: S102
    # The quickstart meta-trains 2,001 steps: MAML must have learned something by then.
    assert int(namespace["state"].step) == 2001
    assert float(namespace["metrics"]["loss"][-1]) < float(namespace["metrics"]["pre_loss"][-1])
    for block in blocks[1:]:
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102
        assert all(bool(jnp.all(jnp.isfinite(v))) for v in namespace["metrics"].values())
    # The ProtoNet example claims accuracy well above chance (0.2) on held-out tasks.
    assert float(namespace["per_task"]["accuracy"].mean()) > 0.4


def test_readme_starts_with_the_two_commands_and_ci_runs_the_test_command():
    first = re.search(r"```bash\n(.*?)```", README, flags=re.S).group(1).splitlines()
    run_cmd, test_cmd = (line.split("#")[0].strip() for line in first[:2])
    assert run_cmd == "pip install -e . && metajax run sinusoid_maml"
    assert test_cmd in (ROOT / ".ci" / "run").read_text()
