"""RL^2 and MAML-RL on mazes whose walls, hazards and goal change per task, against a policy
pretrained on all mazes and a random init, each fine-tuned by VPG steps."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from metajax.experiment import RLGridworldConfig, run_rl_gridworld

# `metajax run --processes N` is refused: the meta-iteration samples its tasks inside the
# step, and that sampling is not split between processes (`metajax sweep --processes N` runs
# separate runs side by side instead).
PROCESSES = False


@dataclasses.dataclass(frozen=True)
class Config(RLGridworldConfig):
    """5 x 5 mazes seen through a 3 x 3 window; MAML-RL and the pretrained policy: 300 TRPO
    steps on 20 mazes x 10 episodes (MLP of 32 units, inner VPG step 0.5); RL^2: 1,500 PPO
    steps on 64 trials of 4 episodes (GRUs of 64 units); 500 held-out mazes."""


def main(config: Config, out_dir: str | Path | None = None, *, progress: bool = True) -> dict:
    """Runs the experiment; writes metrics, summary and plots into ``out_dir`` if given."""
    return run_rl_gridworld(config, out_dir=out_dir, progress=progress)
