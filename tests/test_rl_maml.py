"""MAML-RL: the meta-gradient of the expected post-adaptation return against a closed form."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from metajax import rl

# one state, two actions paying 1.0 and 0.2, one step per episode
REWARDS = np.array([[1.0, 0.2]])
ENV = rl.tabular_mdp(np.ones((1, 2, 1)), REWARDS, np.ones(1), horizon=1)
PI = rl.categorical_mlp_policy(1, 2, hidden=())
PARAMS = [{"w": jnp.array([[0.3, -0.2]]), "b": jnp.zeros(2)}]
LR, EPISODES = 1.0, 2


def _expected_post_return(logits):
    """E over the pre-update episodes of the return after one VPG step (NumPy, float64).

    The logits are ``w + b`` and the VPG step moves ``w`` and ``b`` by the same gradient, so
    the adapted logits are ``logits + 2 * LR * g`` with ``g`` the surrogate's gradient in them.
    """
    def softmax(z):
        e = np.exp(z - z.max())
        return e / e.sum()
    p = softmax(logits)
    total = 0.0
    for acts in itertools.product(range(2), repeat=EPISODES):
        g = sum((np.eye(2)[a] - p) * REWARDS[0, a] for a in acts) / EPISODES
        total += np.prod(p[list(acts)]) * softmax(logits + 2 * LR * g) @ REWARDS[0]
    return total


def _fd_meta_gradient():
    z = np.asarray(PARAMS[0]["w"][0] + PARAMS[0]["b"], np.float64)
    dz = np.array([(_expected_post_return(z + e) - _expected_post_return(z - e)) / 2e-5
                   for e in np.eye(2) * 1e-5])
    return np.concatenate([dz, dz])  # d/dw and d/db (ravel order: b, then w)


def _meta_gradients(n, **kw):
    def capture(p, st, s):
        return p, st, {"grad": ravel_pytree(jax.grad(lambda q: rl.surrogate_value(s, q))(p))[0]}
    learner = rl.maml_rl(ENV, PI, inner_lr=LR, num_episodes=EPISODES, meta_batch=8,
                         outer=rl.PolicyOptimizer(lambda p: (), capture),
                         inner_advantages=rl.reward_to_go_advantages(), **kw)
    state = learner.init(PARAMS)
    return np.asarray(jax.jit(jax.vmap(lambda k: learner.step(state, k)[1]["grad"]))(
        jax.random.split(jax.random.PRNGKey(7), n)))


def test_meta_gradient_with_the_pre_update_score_equals_finite_differences():
    exact = _fd_meta_gradient()
    g = _meta_gradients(6000, pre_update_score=True)
    mean, se = g.mean(0), g.std(0) / np.sqrt(len(g))
    assert np.all(np.abs(mean - exact) < 4.5 * se), (mean, exact, se)
    assert np.abs(exact).min() > 50 * se.max()


def test_the_papers_estimator_leaves_out_the_pre_update_term():
    exact = _fd_meta_gradient()
    g = _meta_gradients(2000)
    se = g.std(0) / np.sqrt(len(g))
    assert np.all(np.abs(g.mean(0) - exact) > 20 * se)  # biased: half the gradient here


@pytest.mark.slow
def test_first_order_differs_from_second_order():
    second = _meta_gradients(500).mean(0)
    first = _meta_gradients(500, first_order=True).mean(0)
    assert np.abs(second - first).max() > 1e-3


NAV = rl.point_navigation(horizon=8)
NAV_PI = rl.gaussian_mlp_policy(2, 2, hidden=(8,))


@pytest.mark.slow
def test_a_meta_iteration_is_one_program_and_jit_equals_eager():
    learner = rl.maml_rl(NAV, NAV_PI, num_episodes=3, meta_batch=2,
                         outer=rl.trpo(cg_iters=3, max_backtracks=3))
    state = learner.init(NAV_PI.init(jax.random.PRNGKey(0)))
    eager_state, eager = learner.step(state, jax.random.PRNGKey(1))
    jit_state, jitted = jax.jit(learner.step)(state, jax.random.PRNGKey(1))
    for a, b in zip(jax.tree.leaves(eager_state), jax.tree.leaves(jit_state), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-5)
    assert float(jitted["kl"]) <= 0.01 + 1e-6
    np.testing.assert_allclose(eager["return_post"], jitted["return_post"], rtol=1e-4)


def test_adaptation_returns_shape_and_zero_steps_is_the_rollout_return():
    goals = NAV.sample_tasks(jax.random.PRNGKey(0), 3)
    params = NAV_PI.init(jax.random.PRNGKey(1))
    r = jax.jit(lambda p: rl.adaptation_returns(NAV, NAV_PI, p, jax.random.PRNGKey(2), goals,
                                                lrs=(0.5,), num_episodes=5))(params)
    assert r.shape == (3, 2)
    keys = jax.random.split(jax.random.PRNGKey(2), 3)
    first = jax.random.split(keys[0], 2)[0]
    traj = jax.jit(lambda p: rl.rollout(NAV, NAV_PI, p, first, goals[0], num_episodes=5))(params)
    np.testing.assert_allclose(r[0, 0], rl.episode_returns(traj).mean(), rtol=1e-5)


@pytest.mark.parametrize("kw, match", [
    ({"inner_steps": -1}, "inner_steps"),
    ({"num_episodes": 0}, "num_episodes"),
    ({"meta_batch": 0}, "meta_batch"),
    ({"inner_lr": 0.0}, "inner_lr"),
    ({"outer": "trpo"}, "outer"),
])
def test_bad_options_are_named(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        rl.maml_rl(NAV, NAV_PI, **kw)
