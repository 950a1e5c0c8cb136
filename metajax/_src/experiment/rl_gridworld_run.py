"""Meta-RL on a gridworld whose rules change per task: RL^2 and MAML-RL against fine-tuning.

:func:`run_rl_gridworld` is the driver of ``rl_gridworld``. Each task is a new maze (walls,
hazards, goal; :func:`metajax.rl.gridworld`), seen only through the 3 x 3 cells around the
agent, so the agent must explore to find the goal and exploit what it found. Two ways to
adapt, on the same held-out mazes:

- **by gradient steps** (MAML-RL, a policy pretrained on all mazes, a random init): the
  return after 0, 1, 2, ... VPG steps, each on ``eval_episodes`` episodes of the maze;
- **in memory** (RL^2): a GRU policy whose state carries across the episodes of a trial; the
  return of the 1st, 2nd, ... episode of the trial.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import jax
import numpy as np

from metajax._src.core.evaluate import mean_ci95
from metajax._src.experiment import plots
from metajax._src.experiment.config import (
    Count,
    PositiveRate,
    Rule,
    Size,
    Steps,
    TestTasks,
    validate_config,
)
from metajax._src.experiment.rl_run import plot_returns_vs_steps, train_method
from metajax._src.experiment.run_io import RunWriter, read_records
from metajax._src.tasks.streams import split_key

Probability = Annotated[float, Rule(low=0.0, high=0.9)]


@dataclasses.dataclass(frozen=True)
class RLGridworldConfig:
    """RL^2 and MAML-RL on ``size`` x ``size`` mazes (walls ``wall_prob``, hazards
    ``hazard_prob`` per cell, horizon ``2 size^2``).

    MAML-RL and the pretrained policy (categorical MLPs of ``hidden`` units) train for
    ``meta_iterations`` TRPO steps (KL ``max_kl``) on ``meta_batch`` mazes of ``num_episodes``
    episodes; MAML's inner step is one VPG step of ``inner_lr``. RL^2 (actor and critic GRUs of
    ``rl2_hidden`` units) trains with PPO for ``rl2_steps`` steps on ``rl2_meta_batch`` trials
    of ``episodes_per_trial`` episodes. All are tested on ``test_tasks`` held-out mazes.
    """

    seed: int = 0
    size: Annotated[int, Rule(low=2, high=16)] = 5
    wall_prob: Probability = 0.2
    hazard_prob: Probability = 0.1
    meta_iterations: Steps = 300
    meta_batch: Count = 20
    num_episodes: Count = 10
    inner_lr: PositiveRate = 0.5
    max_kl: PositiveRate = 0.01
    first_order: bool = False
    hidden: Size = (32,)
    rl2_steps: Steps = 1500
    rl2_meta_batch: Count = 64
    rl2_hidden: Count = 64
    episodes_per_trial: Annotated[int, Rule(low=2, high=10)] = 4
    lr: PositiveRate = 1e-3
    clip_grad_norm: PositiveRate = 0.5
    entropy_coef: Annotated[float, Rule(low=0.0, high=1.0)] = 0.01
    epochs: Count = 4
    eval_lrs: Annotated[tuple[float, ...], Rule(low=0.0, high=100.0, allow_empty=False)] = (
        0.5, 0.5, 0.5)
    eval_episodes: Count = 10
    test_tasks: TestTasks = 500
    log_every: Steps = 50
    steps_per_call: Steps = 50

    def __post_init__(self):
        validate_config(self)


def run_rl_gridworld(config: RLGridworldConfig, *, out_dir: str | Path | None = None,
                     progress: bool = True) -> dict:
    """Trains MAML-RL, the pretrained policy and RL^2; tests them with a random init on the
    same held-out mazes.

    Returns:
        ``{"metric": "return", "results": {method: {"0": {mean, ci95, n}, ...}}, ...}``: for
        ``maml``, ``pretrained`` and ``scratch`` column ``k`` is the mean episode return
        after ``k`` VPG steps; for ``rl2`` it is the return of episode ``k + 1`` of a trial.
    """
    import optax

    from metajax._src.rl.gridworld import gridworld
    from metajax._src.rl.maml_rl import adaptation_returns, joint_training, maml_rl
    from metajax._src.rl.outer import trpo
    from metajax._src.rl.policy import categorical_mlp_policy
    from metajax._src.rl.rl2 import gru_policy, rl2, rollout_trials

    env = gridworld(size=config.size, wall_prob=config.wall_prob,
                    hazard_prob=config.hazard_prob)
    (obs_dim,) = env.observation_shape
    policy = categorical_mlp_policy(obs_dim, env.num_actions, hidden=config.hidden)
    common = dict(num_episodes=config.num_episodes, meta_batch=config.meta_batch,
                  outer=trpo(max_kl=config.max_kl))
    writer = RunWriter(out_dir) if out_dir is not None else None
    init = policy.init(jax.random.PRNGKey(config.seed))
    train_key = lambda i: jax.random.fold_in(split_key(config.seed, "train"), i)  # noqa: E731
    trained, train_seconds = {"scratch": init}, {}
    for index, (name, learner) in enumerate({
            "maml": maml_rl(env, policy, inner_lr=config.inner_lr,
                            first_order=config.first_order, **common),
            "pretrained": joint_training(env, policy, **common)}.items()):
        result = train_method(learner, init, name=name, key=train_key(index),
                              steps=config.meta_iterations, tasks_per_step=config.meta_batch,
                              config=config, writer=writer, progress=progress)
        trained[name], train_seconds[name] = result.state.params, result.train_seconds

    recurrent = gru_policy(obs_dim, env.num_actions, hidden=config.rl2_hidden)
    opt = optax.chain(optax.clip_by_global_norm(config.clip_grad_norm), optax.adam(config.lr))
    learner = rl2(env, recurrent, opt, meta_batch=config.rl2_meta_batch,
                  episodes_per_trial=config.episodes_per_trial, epochs=config.epochs,
                  entropy_coef=config.entropy_coef)
    result = train_method(learner, recurrent.init(jax.random.PRNGKey(config.seed)), name="rl2",
                          key=train_key(2), steps=config.rl2_steps,
                          tasks_per_step=config.rl2_meta_batch, config=config, writer=writer,
                          progress=progress)
    train_seconds["rl2"] = result.train_seconds

    key = split_key(config.seed, "test")
    test = env.sample_tasks(key, config.test_tasks)
    lrs = tuple(config.eval_lrs)
    per_task = {name: np.asarray(jax.jit(lambda p: adaptation_returns(
        env, policy, p, key, test, lrs=lrs, num_episodes=config.eval_episodes))(params))
        for name, params in trained.items()}

    def episode_returns(params):
        trials = rollout_trials(env, recurrent, params, key, test,
                                episodes_per_trial=config.episodes_per_trial)
        return trials.rewards.reshape(config.test_tasks, config.episodes_per_trial, -1).sum(-1)

    per_task["rl2"] = np.asarray(jax.jit(episode_returns)(result.state.params))
    results = {name: {str(k): mean_ci95(per_task[name][:, k])._asdict()
                      for k in range(per_task[name].shape[1])}
               for name in ("rl2", "maml", "pretrained", "scratch")}
    summary = {
        "metric": "return", "higher_is_better": True, "results": results,
        "caption": f"Held-out mazes: mean episode return (mean ± 95% CI over "
                   f"{config.test_tasks} mazes; higher is better). Column k: after k VPG "
                   f"steps of {config.eval_episodes} episodes each (maml, pretrained, "
                   f"scratch); episode k + 1 of a trial (rl2).",
        "num_test_tasks": config.test_tasks, "train_seconds": train_seconds}
    if writer is not None:
        writer.write("summary.json", summary)
        plots.plot_learning_curve(read_records(writer.path("metrics.jsonl")),
                                  writer.path("learning_curve.png"), metric="loss",
                                  log_scale=False)
        plot_returns_vs_steps(summary, writer.path("returns.png"),
                              xlabel="VPG steps (maml, pretrained, scratch) / earlier "
                                     "episodes of the trial (rl2)")
    return summary
