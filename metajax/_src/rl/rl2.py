"""RL^2 (Duan et al., 2016; Wang et al., 2016): a recurrent policy whose state carries across
the episodes of a trial, trained with PPO; the learning algorithm lives in its activations."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from metajax._src.core.types import MetaLearner, MetaState
from metajax._src.rl.advantages import discounted_returns
from metajax._src.rl.env import Environment, check_environment, check_int
from metajax._src.rl.policy import glorot_uniform

PyTree = Any


class RecurrentPolicy(NamedTuple):
    """A recurrent actor-critic over discrete actions.

    Attributes:
        init: ``init(key) -> params``.
        initial_state: ``initial_state() -> h``.
        step: ``step(params, h, x) -> (h, logits, value)`` where ``x`` is
            :func:`rl2_inputs` of one step.
        num_actions: the number of actions.
    """

    init: Callable[[jax.Array], PyTree]
    initial_state: Callable[[], jax.Array]
    step: Callable[[PyTree, jax.Array, jax.Array], tuple[jax.Array, jax.Array, jax.Array]]
    num_actions: int


def rl2_inputs(obs, prev_action, prev_reward, prev_done, num_actions: int) -> jax.Array:
    """What an RL^2 policy reads at a step: the observation, the previous action (one-hot),
    reward and termination flag."""
    return jnp.concatenate([jnp.ravel(obs), jax.nn.one_hot(prev_action, num_actions),
                            jnp.reshape(prev_reward, (1,)),
                            jnp.reshape(prev_done, (1,)).astype(jnp.float32)])


def gru_policy(obs_dim: int, num_actions: int, *, hidden: int = 64) -> RecurrentPolicy:
    """Two GRUs over :func:`rl2_inputs`: an actor with a linear policy head (logits) and a
    critic with a linear value head (separate networks, so the value loss does not shape the
    actor's memory). The state is both GRUs' states, ``[2 * hidden]``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> pi = gru_policy(1, 3, hidden=8)
        >>> params = pi.init(jax.random.PRNGKey(0))
        >>> x = rl2_inputs(jnp.zeros(1), 0, 0.0, False, 3)
        >>> h, logits, value = pi.step(params, pi.initial_state(), x)
        >>> h.shape, logits.shape, value.shape
        ((16,), (3,), ())
    """
    for name, v in (("obs_dim", obs_dim), ("num_actions", num_actions), ("hidden", hidden)):
        check_int(name, v)
    n_in = obs_dim + num_actions + 2

    def gru_init(key, n_out, out_scale):
        k1, k2, k3 = jax.random.split(key, 3)
        return {"wx": glorot_uniform(k1, (n_in, 3 * hidden)),
                "wh": glorot_uniform(k2, (hidden, 3 * hidden)), "b": jnp.zeros(3 * hidden),
                "out": glorot_uniform(k3, (hidden, n_out)) * out_scale, "out_b": jnp.zeros(n_out)}

    def init(key):
        k_actor, k_critic = jax.random.split(key)
        return {"actor": gru_init(k_actor, num_actions, 0.1), "critic": gru_init(k_critic, 1, 1.0)}

    def gru(p, h, x):
        gx = x @ p["wx"] + p["b"]
        gh = h @ p["wh"]
        r = jax.nn.sigmoid(gx[:hidden] + gh[:hidden])
        z = jax.nn.sigmoid(gx[hidden:2 * hidden] + gh[hidden:2 * hidden])
        n = jnp.tanh(gx[2 * hidden:] + r * gh[2 * hidden:])
        h = (1 - z) * n + z * h
        return h, h @ p["out"] + p["out_b"]

    def step(params, h, x):
        h_actor, logits = gru(params["actor"], h[:hidden], x)
        h_critic, value = gru(params["critic"], h[hidden:], x)
        return jnp.concatenate([h_actor, h_critic]), logits, value[0]

    return RecurrentPolicy(init, lambda: jnp.zeros(2 * hidden), step, num_actions)


class Trial(NamedTuple):
    """One trial: ``episodes_per_trial`` episodes of one task, flattened to ``[steps]``.

    Attributes:
        inputs: :func:`rl2_inputs` at each step.
        actions: the actions.
        rewards: the rewards (0 where ``mask`` is 0).
        mask: 1 for steps of an episode, 0 after it ended.
        logp: log-probabilities of the actions when sampled.
        values: the value head's estimates when sampled.
    """

    inputs: jax.Array
    actions: jax.Array
    rewards: jax.Array
    mask: jax.Array
    logp: jax.Array
    values: jax.Array


def rollout_trial(env: Environment, policy: RecurrentPolicy, params: PyTree, key: jax.Array,
                  task: PyTree, *, episodes_per_trial: int = 1) -> Trial:
    """Runs one trial; the policy's state carries across its episodes (it is reset only
    between trials). Steps after an episode's ``done`` are masked until the next episode."""
    check_environment(env)
    if env.num_actions is None:
        raise ValueError("`env`: RL^2's GRU policy needs discrete actions (env.num_actions).")
    check_int("episodes_per_trial", episodes_per_trial)
    k = policy.num_actions

    def episode(carry, key):
        h, a, r, d = carry
        k_reset, k_steps = jax.random.split(key)
        obs, state = env.reset(k_reset, task)

        def body(c, key):
            obs, state, alive, h, a, r, d = c
            k_act, k_env = jax.random.split(key)
            x = rl2_inputs(obs, a, r, d, k)
            h_new, logits, value = policy.step(params, h, x)
            action = jax.random.categorical(k_act, logits)
            nobs, nstate, reward, done = env.step(k_env, state, action, task)
            reward = jnp.where(alive, reward, 0.0)
            keep = lambda new, old: jax.tree.map(  # noqa: E731
                lambda u, v: jnp.where(alive, u, v), new, old)
            out = (x, action, reward, alive.astype(jnp.float32),
                   jax.nn.log_softmax(logits)[action], value)
            c = (keep(nobs, obs), keep(nstate, state), alive & ~done, keep(h_new, h),
                 jnp.where(alive, action, a), jnp.where(alive, reward, r),
                 jnp.where(alive, done, d))
            return c, out

        c, out = jax.lax.scan(body, (obs, state, jnp.array(True), h, a, r, d),
                              jax.random.split(k_steps, env.horizon))
        _, _, _, h, a, r, _ = c
        return (h, a, r, jnp.array(True)), out

    init = (policy.initial_state(), jnp.zeros([], jnp.int32), jnp.zeros([]), jnp.array(False))
    _, out = jax.lax.scan(episode, init, jax.random.split(key, episodes_per_trial))
    flat = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), out)
    return Trial(flat[0], flat[1], flat[2].astype(jnp.float32), flat[3], flat[4], flat[5])


def replay(policy: RecurrentPolicy, params: PyTree, inputs: jax.Array, mask: jax.Array):
    """Logits and values of a trial's steps under ``params`` (the GRU over recorded inputs;
    masked steps leave its state unchanged, as in :func:`rollout_trial`)."""

    def body(h, xm):
        x, m = xm
        h_new, logits, value = policy.step(params, h, x)
        return jnp.where(m > 0, h_new, h), (logits, value)

    _, (logits, values) = jax.lax.scan(body, policy.initial_state(), (inputs, mask))
    return logits, values


def _gae(rewards, values, mask, discount, lam):
    nxt = jnp.concatenate([values[1:], jnp.zeros(1)])
    nxt_mask = jnp.concatenate([mask[1:], jnp.zeros(1)])
    delta = (rewards + discount * nxt * nxt_mask - values) * mask
    return discounted_returns(delta, jnp.ones_like(mask), discount * lam) * mask


def rl2(env: Environment, policy: RecurrentPolicy, optimizer: optax.GradientTransformation,
        *, meta_batch: int = 128, episodes_per_trial: int = 1, discount: float = 0.99,
        gae_lambda: float = 0.3, clip: float = 0.2, epochs: int = 4, value_coef: float = 0.5,
        entropy_coef: float = 0.01) -> MetaLearner:
    """RL^2 trained with PPO: each outer step runs ``meta_batch`` trials (a new task each,
    ``episodes_per_trial`` episodes, the policy's state carried across them), computes GAE
    advantages over the whole trial (``discount``, ``gae_lambda``: Duan et al.'s 0.99 and
    0.3) and takes ``epochs`` full-batch PPO-clip steps of ``optimizer`` on the clipped
    surrogate plus ``value_coef`` times the value loss minus ``entropy_coef`` times the entropy.

    Returns:
        ``MetaLearner(init, step)``; ``step(state, key) -> (state, metrics)`` with
        ``trial_return`` (mean total reward per trial) and ``loss`` (its negative).

    Examples:
        >>> import jax, optax
        >>> from metajax import rl
        >>> env = rl.bernoulli_bandit(3, 5)
        >>> pi = rl.gru_policy(1, 3, hidden=8)
        >>> learner = rl.rl2(env, pi, optax.adam(1e-3), meta_batch=4)
        >>> state = learner.init(pi.init(jax.random.PRNGKey(0)))
        >>> state, metrics = jax.jit(learner.step)(state, jax.random.PRNGKey(1))
        >>> int(state.step)
        1
    """
    check_environment(env)
    check_int("meta_batch", meta_batch)
    check_int("epochs", epochs)
    if not 0.0 < clip < 1.0:
        raise ValueError(f"`clip`: expected a number in (0, 1); got {clip!r}.")

    def loss_fn(params, trials, adv, returns):
        logits, values = jax.vmap(lambda t: replay(policy, params, t.inputs, t.mask))(trials)
        logp_all = jax.nn.log_softmax(logits)
        logp = jnp.take_along_axis(logp_all, trials.actions[..., None], -1)[..., 0]
        ratio = jnp.exp(logp - trials.logp)
        surr = jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - clip, 1 + clip) * adv)
        n = jnp.maximum(jnp.sum(trials.mask), 1.0)
        entropy = -jnp.sum(jnp.exp(logp_all) * logp_all, -1)
        policy_loss = -jnp.sum(surr * trials.mask) / n
        value_loss = jnp.sum((values - returns) ** 2 * trials.mask) / n
        return (policy_loss + value_coef * value_loss
                - entropy_coef * jnp.sum(entropy * trials.mask) / n)

    def init(params):
        return MetaState(params, optimizer.init(params), jnp.zeros([], jnp.int32))

    def step(state, key):
        k_tasks, k_roll = jax.random.split(key)
        tasks = env.sample_tasks(k_tasks, meta_batch)
        trials = rollout_trials(env, policy, state.params, k_roll, tasks,
                                episodes_per_trial=episodes_per_trial)
        adv = jax.vmap(lambda t: _gae(t.rewards, t.values, t.mask, discount, gae_lambda))(
            trials)
        returns = jax.vmap(lambda t: discounted_returns(t.rewards, t.mask, discount))(trials)
        m = trials.mask
        mean = jnp.sum(adv * m) / jnp.sum(m)
        std = jnp.sqrt(jnp.sum(((adv - mean) * m) ** 2) / jnp.sum(m))
        adv = (adv - mean) / (std + 1e-8) * m

        def epoch(carry, _):
            params, opt_state = carry
            g = jax.grad(loss_fn)(params, trials, adv, returns)
            updates, opt_state = optimizer.update(g, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), None

        (params, opt_state), _ = jax.lax.scan(epoch, (state.params, state.opt_state), None,
                                              length=epochs)
        trial_return = jnp.mean(jnp.sum(trials.rewards, -1))
        return (MetaState(params, opt_state, state.step + 1),
                {"trial_return": trial_return, "loss": -trial_return})

    return MetaLearner(init=init, step=step)


def rollout_trials(env: Environment, policy: RecurrentPolicy, params: PyTree, key: jax.Array,
                   tasks: PyTree, *, episodes_per_trial: int = 1) -> Trial:
    """One trial of each task of ``tasks`` (leading axis), each with a key split from
    ``key``: :func:`rollout_trial` under one ``vmap``, every field ``[tasks, steps]``."""
    n = jax.tree.leaves(tasks)[0].shape[0]
    return jax.vmap(lambda k, t: rollout_trial(env, policy, params, k, t,
                                               episodes_per_trial=episodes_per_trial))(
        jax.random.split(key, n), tasks)


def trial_returns(env: Environment, policy: RecurrentPolicy, params: PyTree, key: jax.Array,
                  tasks: PyTree, *, episodes_per_trial: int = 1) -> jax.Array:
    """Total reward of one trial of each task: ``[tasks]`` (per episode: reshape
    ``Trial.rewards``)."""
    trials = rollout_trials(env, policy, params, key, tasks,
                            episodes_per_trial=episodes_per_trial)
    return jnp.sum(trials.rewards, -1)
