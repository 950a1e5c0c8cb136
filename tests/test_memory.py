"""XLA's memory estimate of a training step, and the refusal of one the machine cannot hold."""

import jax
import jax.numpy as jnp
import pytest

from metajax import cli
from metajax._src.experiment import memory
from metajax._src.experiment.memory import MemoryEstimateError, check_fits, program_bytes


def _compiled(n):
    return jax.jit(lambda x: jnp.tanh(x) @ x.T).lower(jnp.ones((n, 64))).compile()


def test_the_estimate_counts_the_program_and_grows_with_its_batch():
    small, large = program_bytes(_compiled(100)), program_bytes(_compiled(1000))
    assert small >= 100 * 64 * 4 + 100 * 100 * 4  # at least the argument and the output
    assert large >= 1000 * 64 * 4 + 1000 * 1000 * 4
    assert large > 40 * small  # the output grows 100-fold, the argument 10-fold


def test_check_fits_refuses_with_both_figures():
    compiled = _compiled(1000)
    check_fits(compiled, tasks_per_step=1000, available=2 ** 40)
    with pytest.raises(MemoryEstimateError, match="tasks_per_step: the training step needs "
                                                  "about .* for 1000 tasks per step") as info:
        check_fits(compiled, tasks_per_step=1000, available=2 ** 20)
    assert info.value.needed == program_bytes(compiled) and info.value.available == 2 ** 20


def test_host_memory_is_read():
    assert memory.available_bytes() > 2 ** 20


def test_the_cli_refuses_a_meta_batch_the_memory_cannot_hold(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device=None: 2 ** 16)
    out = tmp_path / "run"
    assert cli.main(["run", "sinusoid_maml", "--out", str(out), "--no-progress",
                     "--set", "meta_batch=64", "--set", "num_steps=2"]) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith("metajax run sinusoid_maml: meta_batch: the training step needs "
                          "about "), err
    assert "(XLA's estimate for meta_batch = 64), more than the 6.1e-05 GiB" in err
    assert not out.exists()  # nothing trained, nothing left behind
