"""MAML-RL on 2-D point navigation (Finn et al., 2017, Sec. 5.3), against a policy pretrained
on all goals, a random initialisation and the goal-aware oracle."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from metajax.experiment import RLNavigationConfig, run_rl_navigation

# `metajax run --processes N` is refused: the meta-iteration samples its tasks inside the
# step, and that sampling is not split between processes (`metajax sweep --processes N` runs
# separate runs side by side instead).
PROCESSES = False


@dataclasses.dataclass(frozen=True)
class Config(RLNavigationConfig):
    """The paper's settings: Gaussian MLP policy (100, 100) ReLU, one VPG step of 0.5 on 20
    episodes per goal, TRPO (KL 0.01) over 20 goals per meta-iteration, 100 iterations; tested
    on 40 held-out goals with 40 episodes per step; 3 seeds."""


def main(config: Config, out_dir: str | Path | None = None, *, progress: bool = True) -> dict:
    """Runs the experiment; writes metrics, summary and plots into ``out_dir`` if given."""
    return run_rl_navigation(config, out_dir=out_dir, progress=progress)
