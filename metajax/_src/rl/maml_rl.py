"""MAML for reinforcement learning (Finn et al., 2017): one meta-iteration is one XLA program."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from metajax._src.core.types import MetaLearner, MetaState
from metajax._src.rl.advantages import AdvantageFn, linear_baseline_advantages
from metajax._src.rl.env import Environment, check_environment, check_int
from metajax._src.rl.outer import PolicyOptimizer, Surrogate, trpo
from metajax._src.rl.pg import log_probs, vpg_update
from metajax._src.rl.policy import Policy
from metajax._src.rl.rollout import Trajectory, episode_returns, rollout

PyTree = Any


class TaskSamples(NamedTuple):
    """One task's samples of a meta-iteration (leading task axis when batched).

    Attributes:
        pre: the trajectories of each inner step (a tuple, one per step).
        pre_adv: their advantages.
        pre_logp: their log-probabilities under the policy that sampled them.
        post: the trajectories of the adapted policy.
        post_adv: their advantages.
        post_logp: their log-probabilities under the adapted policy.
        post_dist: the adapted policy's action distributions at the post-update observations.
        post_return: the mean episode return of ``post``.
    """

    pre: tuple
    pre_adv: tuple
    pre_logp: tuple
    post: Trajectory
    post_adv: jax.Array
    post_logp: jax.Array
    post_dist: PyTree
    post_return: jax.Array


def adapt_policy(policy: Policy, params: PyTree, trajectories, advantages, *, lr,
                 first_order: bool = False) -> list:
    """The parameters after each of ``len(trajectories)`` VPG steps: ``[params, p1, ...]``."""
    out = [params]
    for traj, adv in zip(trajectories, advantages, strict=True):
        out.append(vpg_update(policy, out[-1], traj, adv, lr=lr, first_order=first_order))
    return out


def _dists(policy, params, obs):
    return jax.vmap(jax.vmap(policy.dist, in_axes=(None, 0)), in_axes=(None, 0))(params, obs)


def maml_rl(env: Environment, policy: Policy, *, inner_lr: float = 0.5, inner_steps: int = 1,
            num_episodes: int = 20, meta_batch: int = 20,
            outer: PolicyOptimizer | None = None,
            inner_advantages: AdvantageFn | None = None,
            outer_advantages: AdvantageFn | None = None,
            first_order: bool = False, pre_update_score: bool = False) -> MetaLearner:
    """MAML-RL: meta-learns a policy initialisation that one VPG step adapts to a new task.

    ``step(state, key)`` samples ``meta_batch`` tasks from ``env.sample_tasks``; for each (one
    ``vmap``), ``num_episodes`` episodes of the current policy, ``inner_steps`` VPG steps of
    size ``inner_lr`` (advantages from ``inner_advantages``, each step on fresh episodes of
    the policy it starts from), then ``num_episodes`` episodes of the adapted policy. The outer
    update (``outer``, TRPO by default as in the paper) maximises the adapted policies'
    importance-sampled surrogate (advantages from ``outer_advantages``), differentiated
    through the inner steps (second order; ``first_order=True`` treats the inner gradients as
    constants), with the mean KL of the adapted policies as TRPO's constraint.

    The paper's estimator treats the pre-update episodes as fixed samples and so leaves out
    the dependence of their distribution on the initialisation. ``pre_update_score=True`` adds
    that score-function term (as DiCE and ProMP do): the adapted policies' return, minus the
    mean over the other tasks of the meta-batch, times the pre-update episodes' summed
    log-probabilities. With return-unit advantages (``reward_to_go_advantages()``) and episodes
    that do not end early, the outer surrogate's gradient is then an unbiased estimate of the
    gradient of the expected post-adaptation return divided by the horizon.

    ``inner_steps=0`` is joint training on all tasks (the "pretrained" baseline).

    Args:
        env: the task family.
        policy: e.g. :func:`metajax.rl.gaussian_mlp_policy`.
        inner_lr: the VPG step size (the paper's 2-D navigation: 0.5).
        inner_steps: VPG steps per task (>= 0).
        num_episodes: episodes per task and stage (the paper: 20).
        meta_batch: tasks per meta-iteration (the paper: 20).
        outer: :func:`metajax.rl.trpo` (default, ``max_kl=0.01``) or
            :func:`metajax.rl.ppo_clip`.
        inner_advantages: default :func:`metajax.rl.linear_baseline_advantages` ()
            (rllab's: discount 0.99, centred).
        outer_advantages: default the same as ``inner_advantages``.
        first_order: first-order MAML-RL.
        pre_update_score: add the pre-update score-function term (see above).

    Returns:
        ``MetaLearner(init, step)``: ``init(params) -> MetaState``; ``step(state, key) ->
        (state, metrics)`` with ``return_pre`` / ``return_post`` (mean episode returns before
        and after adaptation), the outer update's ``kl``, ``surrogate_gain`` and
        ``step_accepted``.

    Examples:
        >>> import jax
        >>> from metajax import rl
        >>> env = rl.point_navigation(horizon=10)
        >>> pi = rl.gaussian_mlp_policy(2, 2, hidden=(16,))
        >>> learner = rl.maml_rl(env, pi, num_episodes=4, meta_batch=3)
        >>> state = learner.init(pi.init(jax.random.PRNGKey(0)))
        >>> state, metrics = jax.jit(learner.step)(state, jax.random.PRNGKey(1))
        >>> int(state.step), float(metrics["kl"]) <= 0.01
        (1, True)
    """
    check_environment(env)
    check_int("inner_steps", inner_steps, low=0)
    check_int("num_episodes", num_episodes)
    check_int("meta_batch", meta_batch)
    if not isinstance(inner_lr, int | float) or inner_lr <= 0:
        raise ValueError(f"`inner_lr`: expected a positive number; got {inner_lr!r}.")
    outer = trpo() if outer is None else outer
    if not isinstance(outer, PolicyOptimizer):
        raise TypeError(f"`outer` must be a metajax.rl.PolicyOptimizer (trpo(), ppo_clip(...)); "
                        f"got {type(outer).__name__}.")
    inner_adv = inner_advantages or linear_baseline_advantages()
    outer_adv = outer_advantages or inner_adv

    def collect(params, key, task) -> TaskSamples:
        keys = jax.random.split(key, inner_steps + 1)
        pre, pre_adv, pre_logp = [], [], []
        p = params
        for k in range(inner_steps):
            traj = rollout(env, policy, p, keys[k], task, num_episodes=num_episodes)
            adv = inner_adv(traj)
            pre.append(traj), pre_adv.append(adv), pre_logp.append(log_probs(policy, p, traj))
            p = vpg_update(policy, p, traj, adv, lr=inner_lr)
        p = jax.lax.stop_gradient(p)
        post = rollout(env, policy, p, keys[-1], task, num_episodes=num_episodes)
        dist = _dists(policy, p, post.obs)
        return TaskSamples(tuple(pre), tuple(pre_adv), tuple(pre_logp), post, outer_adv(post),
                           log_probs(policy, p, post), dist,
                           jnp.mean(episode_returns(post)))

    def surrogate(samples: TaskSamples) -> Surrogate:
        n_tasks = samples.post_return.shape[0]
        weights = samples.post.mask / jnp.maximum(
            jnp.sum(samples.post.mask, axis=(1, 2), keepdims=True), 1.0) / n_tasks
        others = (jnp.sum(samples.post_return) - samples.post_return) / max(n_tasks - 1, 1)
        score_weight = (samples.post_return - others) / (env.horizon * n_tasks)

        def adapted(params, s: TaskSamples):
            return adapt_policy(policy, params, s.pre, s.pre_adv, lr=inner_lr,
                                first_order=first_order)

        def logratio(params):
            def one(s):
                p = adapted(params, s)[-1]
                return log_probs(policy, p, s.post) - s.post_logp
            return jax.vmap(one)(samples)

        def extra(params):
            if not (pre_update_score and inner_steps):
                return jnp.zeros([])

            def one(s, w):
                ps = adapted(params, s)[:-1]
                total = sum(jnp.sum((log_probs(policy, p, t) - lp) * t.mask)
                            for p, t, lp in zip(ps, s.pre, s.pre_logp, strict=True))
                return w * total
            return jnp.sum(jax.vmap(one)(samples, jax.lax.stop_gradient(score_weight)))

        def dist(params):
            return jax.vmap(lambda s: _dists(policy, adapted(params, s)[-1], s.post.obs))(
                samples)

        def divergence(old, new):
            return jax.vmap(jax.vmap(jax.vmap(policy.kl)))(old, new)

        return Surrogate(logratio, samples.post_adv, weights, extra, dist, samples.post_dist,
                         divergence, weights)

    def init(params) -> MetaState:
        return MetaState(params, outer.init(params), jnp.zeros([], jnp.int32))

    def step(state: MetaState, key: jax.Array):
        k_tasks, k_roll = jax.random.split(key)
        tasks = env.sample_tasks(k_tasks, meta_batch)
        samples = jax.vmap(collect, in_axes=(None, 0, 0))(
            state.params, jax.random.split(k_roll, meta_batch), tasks)
        samples = jax.lax.stop_gradient(samples)
        params, opt_state, metrics = outer.update(state.params, state.opt_state,
                                                  surrogate(samples))
        pre_return = (jnp.mean(episode_returns(samples.pre[0])) if inner_steps
                      else jnp.mean(samples.post_return))
        metrics = {**metrics, "return_pre": pre_return,
                   "return_post": jnp.mean(samples.post_return),
                   "loss": -jnp.mean(samples.post_return)}
        return MetaState(params, opt_state, state.step + 1), metrics

    return MetaLearner(init=init, step=step)


def joint_training(env: Environment, policy: Policy, *, num_episodes: int = 20,
                   meta_batch: int = 20, outer: PolicyOptimizer | None = None,
                   advantages: AdvantageFn | None = None) -> MetaLearner:
    """One policy trained on all tasks together (the "pretrained" baseline): MAML-RL with no
    inner step. Fine-tune it at test time with :func:`metajax.rl.adaptation_returns`."""
    return maml_rl(env, policy, inner_steps=0, num_episodes=num_episodes, meta_batch=meta_batch,
                   outer=outer, outer_advantages=advantages)


def adaptation_returns(env: Environment, policy: Policy, params: PyTree, key: jax.Array,
                       tasks: PyTree, *, lrs=(0.5, 0.25, 0.25), num_episodes: int = 40,
                       advantages: AdvantageFn | None = None) -> jax.Array:
    """Mean episode return of each task after 0, 1, ..., ``len(lrs)`` VPG steps.

    Step ``k`` samples ``num_episodes`` episodes of the current policy (their mean return is
    column ``k``) and takes a VPG step of size ``lrs[k]`` on them (the paper's evaluation:
    40 episodes per step, step sizes 0.5 then 0.25).

    Returns:
        ``[tasks, len(lrs) + 1]`` mean returns.
    """
    check_environment(env)
    check_int("num_episodes", num_episodes)
    lrs = tuple(float(lr) for lr in lrs)
    adv_fn = advantages or linear_baseline_advantages()
    n = {np.shape(leaf)[0] for leaf in jax.tree.leaves(tasks)}
    if len(n) != 1:
        raise ValueError(f"`tasks`: expected one leading task axis on every leaf; got {n}.")

    def one(key, task):
        p, out = params, []
        keys = jax.random.split(key, len(lrs) + 1)
        for k in range(len(lrs) + 1):
            traj = rollout(env, policy, p, keys[k], task, num_episodes=num_episodes)
            out.append(jnp.mean(episode_returns(traj)))
            if k < len(lrs):
                p = vpg_update(policy, p, traj, adv_fn(traj), lr=lrs[k])
        return jnp.stack(out)

    return jax.vmap(one)(jax.random.split(key, n.pop()), tasks)

