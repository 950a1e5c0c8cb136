"""RL^2 on k-armed Bernoulli bandits (Duan et al., 2016), against random, greedy,
epsilon-greedy, UCB1, Thompson sampling and the exact Bayes-optimal value."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from metajax.experiment import RLBanditConfig, run_rl_bandit

# `metajax run --processes N` is refused: the meta-iteration samples its tasks inside the
# step, and that sampling is not split between processes (`metajax sweep --processes N` runs
# separate runs side by side instead).
PROCESSES = False


@dataclasses.dataclass(frozen=True)
class Config(RLBanditConfig):
    """k = 5 arms with trials of n = 10 pulls (3000 PPO steps) and k = 10 with n = 100 (800);
    actor and critic GRUs of 128 units, 256 trials per step, Adam 1e-3 with gradients clipped
    to norm 0.5; 2,000 held-out bandits."""


def main(config: Config, out_dir: str | Path | None = None, *, progress: bool = True) -> dict:
    """Runs the experiment; writes metrics, summary and plots into ``out_dir`` if given."""
    return run_rl_bandit(config, out_dir=out_dir, progress=progress)
