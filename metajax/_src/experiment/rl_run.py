"""Meta-RL experiments: MAML-RL on 2-D navigation against the paper's baselines.

:func:`run_rl_navigation` is the driver of ``rl_navigation_maml``: for each seed, MAML-RL
(VPG inner step, TRPO outer step), a policy trained on all tasks jointly ("pretrained"), a
randomly initialised policy ("scratch") and the goal-aware "oracle", then each on the same
held-out goals after 0, 1, 2, 3 VPG steps, with checkpoints and ``--resume``.
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
from metajax._src.experiment.run_io import RunWriter, read_records
from metajax._src.experiment.training import meta_train
from metajax._src.rl.maml_rl import adaptation_returns, joint_training, maml_rl
from metajax._src.rl.outer import trpo
from metajax._src.rl.point import point_navigation
from metajax._src.rl.policy import gaussian_mlp_policy
from metajax._src.rl.rollout import rollout
from metajax._src.tasks.streams import split_key

# Finn et al. (2017), Fig. 5 (2-D navigation), from the result pickles of cbfinn/maml_rl:
# mean return over 40 held-out goals after 0, 1, 2, 3 policy-gradient steps.
PAPER_NAVIGATION = {"maml": [-40.4, -11.7, -3.3, -3.2], "pretrained": [-40.8, -19.7, -11.7, -8.5],
                    "scratch": [-82.7, -58.0, -53.8, -46.8], "oracle": [-2.29]}


@dataclasses.dataclass(frozen=True)
class RLNavigationConfig:
    """MAML-RL on 2-D point navigation (the paper's settings are the defaults).

    Every seed meta-trains MAML for ``meta_iterations`` TRPO steps on ``meta_batch`` goals of
    ``num_episodes`` episodes each (inner VPG step ``inner_lr``), and the pretrained and
    oracle policies for ``meta_iterations`` TRPO steps on the same kind of batches; each is
    validated every ``val_every`` iterations on ``val_goals`` goals (mean return after one
    step) and the best is tested on ``test_goals`` held-out goals: ``eval_episodes`` episodes
    per step, step sizes ``eval_lrs`` (the paper's evaluation: 40 goals, 40 episodes,
    0.5 then 0.25).
    """

    seeds: Annotated[tuple[int, ...], Rule(low=0, high=2**31 - 1)] = (0, 1, 2)
    meta_iterations: Steps = 100
    meta_batch: Count = 20
    num_episodes: Count = 20
    inner_lr: PositiveRate = 0.5
    max_kl: PositiveRate = 0.01
    first_order: bool = False
    pre_update_score: bool = False
    hidden: Size = (100, 100)
    horizon: Steps = 100
    val_goals: Count = 20
    val_every: Steps = 25
    test_goals: TestTasks = 40
    eval_episodes: Count = 40
    eval_lrs: Annotated[tuple[float, ...], Rule(low=0.0, high=100.0, allow_empty=False)] = (
        0.5, 0.25, 0.25)
    log_every: Steps = 5
    steps_per_call: Steps = 5
    plot_goals: Annotated[int, Rule(low=0, high=16)] = 4

    def __post_init__(self):
        validate_config(self)


def train_method(learner, params, *, name: str, key, steps: int, tasks_per_step: int, config,
                 writer: RunWriter | None, progress: bool, checkpoint_name: str | None = None,
                 **options):
    """Meta-trains one named method of an RL experiment with its own checkpoints and records
    (``config.steps_per_call`` / ``log_every``; ``options`` go to :func:`meta_train`); a resumed
    run drops the records after the last checkpoint."""
    checkpointer = None
    if writer is not None:
        checkpointer = writer.checkpointer(checkpoint_name or name)
        done = checkpointer.steps()
        writer.drop_records_after(name, done[-1] if done else 0)
    return meta_train(
        learner.step, learner.init(params), lambda k: k, key=key, num_steps=steps,
        tasks_per_step=tasks_per_step, steps_per_call=config.steps_per_call,
        log_every=config.log_every,
        on_record=(lambda r: writer.log({"method": name, **r})) if writer else None,
        checkpointer=checkpointer, progress=progress, desc=name, **options)


def run_rl_navigation(config: RLNavigationConfig, *, out_dir: str | Path | None = None,
                      progress: bool = True) -> dict:
    """Runs every seed of ``config``; writes metrics, checkpoints, summary and plots.

    Returns:
        ``{"metric": "return", "results": {method: {"0": {mean, ci95, n}, ...}}, ...}``:
        mean episode return over the held-out goals of all seeds (``n`` goals) after each
        number of VPG steps, for ``maml``, ``pretrained``, ``scratch`` and ``oracle`` (0
        steps: it is told the goal); ``per_seed`` has each seed's means, ``paper`` the
        paper's numbers.
    """
    env, oracle_env = point_navigation(horizon=config.horizon), point_navigation(
        horizon=config.horizon, oracle=True)
    policy = gaussian_mlp_policy(2, 2, hidden=config.hidden)
    oracle_policy = gaussian_mlp_policy(4, 2, hidden=config.hidden)
    outer = trpo(max_kl=config.max_kl)
    common = dict(num_episodes=config.num_episodes, meta_batch=config.meta_batch, outer=outer)
    learners = {
        "maml": (maml_rl(env, policy, inner_lr=config.inner_lr, first_order=config.first_order,
                         pre_update_score=config.pre_update_score, **common), env, policy),
        "pretrained": (joint_training(env, policy, **common), env, policy),
        "oracle": (joint_training(oracle_env, oracle_policy, **common), oracle_env,
                   oracle_policy),
    }
    lrs = tuple(config.eval_lrs)
    writer = RunWriter(out_dir) if out_dir is not None else None
    per_goal: dict[str, list[np.ndarray]] = {}
    per_seed: dict[str, list[list[float]]] = {}
    train_seconds, trajectories = {}, {}
    for seed in config.seeds:
        val_goals = env.sample_tasks(split_key(seed, "val"), config.val_goals)
        test_goals = env.sample_tasks(split_key(seed, "test"), config.test_goals)
        trained = {"scratch": policy.init(jax.random.fold_in(jax.random.PRNGKey(seed), 7))}
        for index, (name, (learner, e, pi)) in enumerate(learners.items()):
            val_lrs = () if name == "oracle" else lrs[:1]  # the return after one step
            val = jax.jit(lambda p, e=e, pi=pi, m=val_lrs: adaptation_returns(
                e, pi, p, split_key(seed, "val"), val_goals, lrs=m,
                num_episodes=config.num_episodes)[:, -1].mean())
            init = pi.init(jax.random.fold_in(jax.random.PRNGKey(seed), 1))
            result = train_method(
                learner, init, name=f"{name}_seed{seed}",
                key=jax.random.fold_in(split_key(seed, "train"), index),
                steps=config.meta_iterations, tasks_per_step=config.meta_batch, config=config,
                writer=writer, progress=progress,
                validate=lambda p, val=val: {"return": float(val(p))},
                val_every=config.val_every, val_metric="return", higher_is_better=True)
            trained[name] = result.best_params
            train_seconds[f"{name}_seed{seed}"] = result.train_seconds
        for name, params in trained.items():
            e, pi = (oracle_env, oracle_policy) if name == "oracle" else (env, policy)
            method_lrs = () if name == "oracle" else lrs
            returns = np.asarray(jax.jit(lambda p, e=e, pi=pi, m=method_lrs: adaptation_returns(
                e, pi, p, split_key(seed, "test"), test_goals, lrs=m,
                num_episodes=config.eval_episodes))(params))
            per_goal.setdefault(name, []).append(returns)
            per_seed.setdefault(name, []).append(returns.mean(0).tolist())
        if seed == config.seeds[0] and config.plot_goals:
            trajectories = _adapted_paths(env, policy, trained, test_goals[:config.plot_goals],
                                          lrs, seed)
    results = {}
    for name in ("maml", "pretrained", "scratch", "oracle"):
        values = np.concatenate(per_goal[name], axis=0)
        results[name] = {str(k): mean_ci95(values[:, k])._asdict()
                         for k in range(values.shape[1])}
    n_goals = config.test_goals * len(config.seeds)
    summary = {"metric": "return", "higher_is_better": True, "results": results,
               "caption": f"Held-out goals: mean episode return after each number of VPG steps "
                          f"(mean ± 95% CI over {n_goals} goals, {len(config.seeds)} seeds; "
                          f"higher is better):",
               "per_seed": per_seed, "seeds": list(config.seeds),
               "num_test_tasks": n_goals,
               "paper": PAPER_NAVIGATION, "train_seconds": train_seconds}
    if writer is not None:
        writer.write("summary.json", summary)
        records = read_records(writer.path("metrics.jsonl"))
        plots.plot_learning_curve(records, writer.path("learning_curve.png"),
                                  metric="return_post", log_scale=False)
        plot_returns_vs_steps(summary, writer.path("returns.png"))
        if trajectories:
            plot_navigation_paths(trajectories, writer.path("trajectories.png"))
    return summary


def _adapted_paths(env, policy, trained, goals, lrs, seed):
    """Positions of one episode per goal of MAML and the pretrained policy before and after
    1 and ``len(lrs)`` VPG steps (the paper's Fig. 4)."""
    from metajax._src.rl.advantages import linear_baseline_advantages
    from metajax._src.rl.pg import vpg_update

    adv = linear_baseline_advantages()
    out = {}
    for name in ("maml", "pretrained"):

        def paths(p, goal, key):
            keys = jax.random.split(key, len(lrs) + 1)
            shown = []
            for k in range(len(lrs) + 1):
                traj = rollout(env, policy, p, keys[k], goal, num_episodes=20)
                shown.append((traj.obs, traj.mask))
                if k < len(lrs):
                    p = vpg_update(policy, p, traj, adv(traj), lr=lrs[k])
            return shown

        result = jax.jit(jax.vmap(paths, in_axes=(None, 0, 0)))(
            trained[name], goals, jax.random.split(split_key(seed, "test"), goals.shape[0]))
        out[name] = {"goals": np.asarray(goals),
                     "stages": [(np.asarray(o), np.asarray(m)) for o, m in result]}
    return out


def plot_returns_vs_steps(summary: dict, path, *,
                          xlabel: str = "policy-gradient steps on the new goal") -> None:
    """Mean return (± 95% CI) against the number of VPG steps, ours and the paper's."""
    plt = plots._pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (name, row) in enumerate(summary["results"].items()):
        steps = [int(s) for s in row]
        means = [row[s]["mean"] for s in row]
        color = f"C{i}"
        if len(steps) == 1:
            ax.axhline(means[0], color=color, ls="-", label=f"{name} (ours)")
        else:
            ax.errorbar(steps, means, yerr=[row[s]["ci95"] for s in row], color=color,
                        marker="o", capsize=3, label=f"{name} (ours)")
        paper = summary.get("paper", {}).get(name)
        if paper and len(paper) == 1:
            ax.axhline(paper[0], color=color, ls=":", label=f"{name} (paper)")
        elif paper:
            ax.plot(range(len(paper)), paper, color=color, ls=":", marker="x",
                    label=f"{name} (paper)")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("mean episode return")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    plots._save(fig, path)


def plot_navigation_paths(paths: dict, path) -> None:
    """One row per method, one panel per goal: an episode's path before adaptation and after
    each VPG step, and the goal (the paper's Fig. 4)."""
    plt = plots._pyplot()
    names = list(paths)
    n_goals = paths[names[0]]["goals"].shape[0]
    fig, axes = plt.subplots(len(names), n_goals, figsize=(3 * n_goals, 3 * len(names)),
                             squeeze=False)
    for r, name in enumerate(names):
        goals, stages = paths[name]["goals"], paths[name]["stages"]
        for g in range(n_goals):
            ax = axes[r][g]
            for k, (obs, mask) in enumerate(stages):
                xy = obs[g, 0][mask[g, 0] > 0]
                ax.plot(xy[:, 0], xy[:, 1], "-", lw=1, label=f"{k} steps" if g == 0 else None)
            ax.plot(*goals[g], "k*", ms=10)
            ax.set_xlim(-0.6, 0.6), ax.set_ylim(-0.6, 0.6)
            ax.set_aspect("equal")
            ax.set_title(f"{name}, goal {g}", fontsize=8)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    plots._save(fig, path)


# Duan et al. (2016), Table 1: total reward per trial, averaged over 1000 test bandits.
PAPER_BANDITS = {
    "k=5,n=10": {"random": 5.0, "gittins": 6.6, "thompson": 5.7, "ucb1": 6.7,
                 "epsilon_greedy": 6.6, "greedy": 6.6, "rl2": 6.7},
    "k=10,n=100": {"random": 49.9, "gittins": 82.8, "thompson": 76.7, "ucb1": 82.4,
                   "epsilon_greedy": 77.4, "greedy": 77.1, "rl2": 83.5},
}


@dataclasses.dataclass(frozen=True)
class RLBanditConfig:
    """RL^2 on k-armed Bernoulli bandits against the classic algorithms.

    For each ``(arms[i], pulls[i])``: RL^2 (actor and critic GRUs of ``hidden`` units, PPO on
    ``meta_batch`` trials per step for ``outer_steps[i]`` steps, Adam ``lr`` on gradients
    clipped to norm ``clip_grad_norm``), then every method on ``test_tasks``
    held-out bandits. epsilon-greedy's ``epsilon`` and UCB1's ``c`` are tuned on
    ``val_tasks`` bandits (Duan et al. tuned their baselines too); the Bayes-optimal value is
    exact where the dynamic programme is small (``pulls <= 10``).
    """

    seed: int = 0
    arms: Annotated[tuple[int, ...], Rule(low=2, high=1000)] = (5, 10)
    pulls: Annotated[tuple[int, ...], Rule(low=1, high=10**4)] = (10, 100)
    outer_steps: Annotated[tuple[int, ...], Rule(low=1, high=10**7)] = (3000, 800)
    meta_batch: Count = 256
    hidden: Count = 128
    lr: PositiveRate = 1e-3
    clip_grad_norm: PositiveRate = 0.5
    entropy_coef: Annotated[float, Rule(low=0.0, high=1.0)] = 0.0
    epochs: Count = 4
    val_tasks: Count = 1000
    test_tasks: TestTasks = 2000
    epsilons: Annotated[tuple[float, ...], Rule(low=0.0, high=1.0)] = (0.01, 0.05, 0.1, 0.2,
                                                                         0.3)
    ucb_cs: Annotated[tuple[float, ...], Rule(low=0.0, high=10.0)] = (0.05, 0.1, 0.2, 0.3,
                                                                        0.5, 1.0)
    log_every: Steps = 100
    steps_per_call: Steps = 100

    def __post_init__(self):
        validate_config(self)

    def validate(self):
        """Rules across fields (the fields' own are in their annotations)."""
        from metajax._src.experiment.config import ConfigError

        if not len(self.arms) == len(self.pulls) == len(self.outer_steps):
            raise ConfigError(f"arms, pulls and outer_steps: expected one entry per setting "
                              f"each; got {len(self.arms)}, {len(self.pulls)} and "
                              f"{len(self.outer_steps)}.")


def run_rl_bandit(config: RLBanditConfig, *, out_dir: str | Path | None = None,
                  progress: bool = True) -> dict:
    """Trains RL^2 for each bandit setting of ``config`` and tests it against the baselines.

    Returns:
        ``{"metric": "trial_return", "results": {method: {"k=5,n=10": {mean, ci95, n}, ...}}}``
        for ``rl2``, ``random``, ``greedy``, ``epsilon_greedy``, ``ucb1``, ``thompson`` and
        (where exact) ``bayes_optimal``; ``tuned`` holds the tuned options, ``paper`` Duan et
        al.'s Table 1 rows, ``regret[setting][method]`` the mean cumulative expected regret
        after each pull (also plotted in ``regret.png``).
    """
    import optax

    from metajax._src.rl import bandit_baselines as bb
    from metajax._src.rl.bandit import bernoulli_bandit
    from metajax._src.rl.rl2 import gru_policy, rl2, rollout_trials

    writer = RunWriter(out_dir) if out_dir is not None else None
    results: dict[str, dict] = {}
    tuned, train_seconds, regret = {}, {}, {}
    for i, (k, n, steps) in enumerate(zip(config.arms, config.pulls, config.outer_steps,
                                          strict=True)):
        label = f"k={k},n={n}"
        env = bernoulli_bandit(k, n)
        policy = gru_policy(1, k, hidden=config.hidden)
        opt = optax.chain(optax.clip_by_global_norm(config.clip_grad_norm),
                          optax.adam(config.lr))
        learner = rl2(env, policy, opt, meta_batch=config.meta_batch,
                      epochs=config.epochs, entropy_coef=config.entropy_coef)
        name = f"rl2_{label}"
        result = train_method(
            learner, policy.init(jax.random.PRNGKey(config.seed)), name=name,
            checkpoint_name=name.replace("=", "").replace(",", "_"),
            key=jax.random.fold_in(split_key(config.seed, "train"), i), steps=steps,
            tasks_per_step=config.meta_batch, config=config, writer=writer, progress=progress)
        train_seconds[label] = result.train_seconds
        val = env.sample_tasks(jax.random.fold_in(split_key(config.seed, "val"), i),
                               config.val_tasks)
        test = env.sample_tasks(jax.random.fold_in(split_key(config.seed, "test"), i),
                                config.test_tasks)
        run = lambda rule, tasks, n=n: np.asarray(jax.jit(  # noqa: E731
            lambda p: bb.run_bandit_rule(rule, p, split_key(config.seed, "test"),
                                         num_pulls=n))(tasks))
        eps = max(config.epsilons, key=lambda e: run(bb.greedy_rule(epsilon=e), val).mean())
        c = max(config.ucb_cs, key=lambda c: run(bb.ucb1_rule(c=c), val).mean())
        tuned[label] = {"epsilon": eps, "ucb1_c": c}
        key = split_key(config.seed, "test")
        trials = jax.jit(lambda p, env=env, policy=policy, test=test: rollout_trials(
            env, policy, p, key, test))(result.state.params)
        pulls = {"rl2": (trials.rewards, trials.actions)}
        for method, rule in {"random": bb.random_rule(), "greedy": bb.greedy_rule(),
                             "epsilon_greedy": bb.greedy_rule(epsilon=eps),
                             "ucb1": bb.ucb1_rule(c=c), "thompson": bb.thompson_rule()}.items():
            pulls[method] = jax.jit(lambda p, rule=rule, n=n: bb.bandit_rule_pulls(
                rule, p, key, num_pulls=n))(test)
        for method, (rewards, arms) in pulls.items():
            results.setdefault(method, {})[label] = mean_ci95(
                np.asarray(rewards.sum(-1)))._asdict()
            regret.setdefault(label, {})[method] = np.asarray(
                bb.expected_regret(test, arms).mean(0)).tolist()
        if n <= 10:
            value = bb.bayes_optimal_value(k, n)
            results.setdefault("bayes_optimal", {})[label] = {"mean": value, "ci95": 0.0,
                                                              "n": 0, "nonfinite": 0}
    summary = {"metric": "trial_return", "higher_is_better": True, "results": results,
               "column_suffix": "", "num_test_tasks": config.test_tasks,
               "caption": f"Held-out bandits: total reward per trial (mean ± 95% CI over "
                          f"{config.test_tasks} bandits; bayes_optimal is exact; higher is "
                          f"better):",
               "tuned": tuned, "paper": PAPER_BANDITS, "train_seconds": train_seconds,
               "regret": regret}
    if writer is not None:
        writer.write("summary.json", summary)
        plots.plot_learning_curve(read_records(writer.path("metrics.jsonl")),
                                  writer.path("learning_curve.png"), metric="trial_return",
                                  log_scale=False)
        plot_bandit_regret(regret, writer.path("regret.png"))
    return summary


def plot_bandit_regret(regret: dict, path) -> None:
    """Mean cumulative expected regret against the pull, one panel per bandit setting."""
    plt = plots._pyplot()
    fig, axes = plt.subplots(1, len(regret), figsize=(5 * len(regret), 3.8), squeeze=False)
    for ax, (label, curves) in zip(axes[0], regret.items(), strict=True):
        for method, curve in curves.items():
            ax.plot(range(1, len(curve) + 1), curve, label=method,
                    lw=2.0 if method == "rl2" else 1.0)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("pull")
        ax.set_ylabel("cumulative expected regret")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    plots._save(fig, path)
