"""Meta-reinforcement learning: environments as pure functions with explicit tasks.

An :class:`Environment` is ``reset(key, task)``, ``step(key, state, action, task)`` and
``sample_tasks(key, n)``; :func:`rollout` runs fixed-length, done-masked episodes of one task
under ``lax.scan`` and :func:`rollout_tasks` one ``vmap`` over tasks. :func:`maml_rl` is
MAML with a vanilla policy-gradient inner step and a TRPO (or PPO-clip) outer step, a
:class:`metajax.MetaLearner` whose ``step(state, key)`` is the whole meta-iteration (sample
tasks, roll out, adapt, roll out again, update) as one XLA program. :func:`rl2` is RL^2: a GRU
policy whose state carries across the episodes of a trial, trained with PPO; its bandit
baselines are :func:`random_rule`, :func:`greedy_rule` (and epsilon-greedy), :func:`ucb1_rule`,
:func:`thompson_rule` and the exact :func:`bayes_optimal_value`.

Examples:
    >>> import jax
    >>> from metajax import rl
    >>> env = rl.point_navigation(horizon=10)
    >>> pi = rl.gaussian_mlp_policy(2, 2, hidden=(16,))
    >>> learner = rl.maml_rl(env, pi, num_episodes=4, meta_batch=3)   # a MetaLearner
    >>> state = learner.init(pi.init(jax.random.PRNGKey(0)))
    >>> # state, metrics = jax.jit(learner.step)(state, key): one meta-iteration
"""

from metajax._src.rl.advantages import (
    discounted_returns,
    fit_linear_baseline,
    linear_baseline_advantages,
    linear_features,
    reward_to_go_advantages,
)
from metajax._src.rl.bandit import bernoulli_bandit
from metajax._src.rl.bandit_baselines import (
    BanditRule,
    bandit_rule_pulls,
    bayes_optimal_value,
    expected_regret,
    greedy_rule,
    random_rule,
    run_bandit_rule,
    thompson_rule,
    ucb1_rule,
)
from metajax._src.rl.env import Environment, check_action, check_environment, with_horizon
from metajax._src.rl.gridworld import GridTask, gridworld
from metajax._src.rl.maml_rl import (
    TaskSamples,
    adapt_policy,
    adaptation_returns,
    joint_training,
    maml_rl,
)
from metajax._src.rl.outer import (
    PolicyOptimizer,
    Surrogate,
    fisher_vector_product,
    mean_kl,
    ppo_clip,
    surrogate_value,
    trpo,
)
from metajax._src.rl.pg import log_probs, pg_surrogate, vpg_update
from metajax._src.rl.point import point_navigation
from metajax._src.rl.policy import Policy, categorical_mlp_policy, gaussian_mlp_policy
from metajax._src.rl.rl2 import (
    RecurrentPolicy,
    Trial,
    gru_policy,
    replay,
    rl2,
    rl2_inputs,
    rollout_trial,
    rollout_trials,
    trial_returns,
)
from metajax._src.rl.rollout import Trajectory, episode_returns, rollout, rollout_tasks
from metajax._src.rl.tabular import expected_return, tabular_mdp

__all__ = [
    "BanditRule",
    "Environment",
    "GridTask",
    "Policy",
    "PolicyOptimizer",
    "RecurrentPolicy",
    "Surrogate",
    "TaskSamples",
    "Trajectory",
    "Trial",
    "adapt_policy",
    "adaptation_returns",
    "bandit_rule_pulls",
    "bayes_optimal_value",
    "bernoulli_bandit",
    "categorical_mlp_policy",
    "check_action",
    "check_environment",
    "discounted_returns",
    "episode_returns",
    "expected_return",
    "expected_regret",
    "fisher_vector_product",
    "fit_linear_baseline",
    "gaussian_mlp_policy",
    "greedy_rule",
    "gridworld",
    "gru_policy",
    "joint_training",
    "linear_baseline_advantages",
    "linear_features",
    "log_probs",
    "maml_rl",
    "mean_kl",
    "pg_surrogate",
    "point_navigation",
    "ppo_clip",
    "random_rule",
    "replay",
    "reward_to_go_advantages",
    "rl2",
    "rl2_inputs",
    "rollout",
    "rollout_tasks",
    "rollout_trial",
    "rollout_trials",
    "run_bandit_rule",
    "surrogate_value",
    "tabular_mdp",
    "thompson_rule",
    "trial_returns",
    "trpo",
    "ucb1_rule",
    "vpg_update",
    "with_horizon",
]
