"""TRPO and PPO-clip: the KL bound, improvement, the line search, the Fisher-vector product."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from metajax import rl

PI = rl.gaussian_mlp_policy(3, 2, hidden=(6,))
PARAMS = PI.init(jax.random.PRNGKey(0))
OBS = jax.random.normal(jax.random.PRNGKey(1), (64, 3))
OLD = jax.vmap(PI.dist, in_axes=(None, 0))(PARAMS, OBS)
ACTIONS = jax.vmap(PI.sample)(jax.random.split(jax.random.PRNGKey(2), 64), OLD)
ADV = jax.random.normal(jax.random.PRNGKey(3), (64,))


def _surrogate(extra=lambda p: jnp.zeros([])):
    dist = lambda p: jax.vmap(PI.dist, in_axes=(None, 0))(p, OBS)  # noqa: E731
    old_lp = jax.vmap(PI.log_prob)(OLD, ACTIONS)
    return rl.Surrogate(
        logratio=lambda p: jax.vmap(PI.log_prob)(dist(p), ACTIONS) - old_lp,
        advantages=ADV, weights=jnp.full(64, 1 / 64), extra=extra, dist=dist, old_dist=OLD,
        divergence=jax.vmap(PI.kl), kl_weights=jnp.full(64, 1 / 64))


POLICIES = {"gaussian": rl.gaussian_mlp_policy(3, 2, hidden=(6,)),
            "categorical": rl.categorical_mlp_policy(3, 4, hidden=(6,))}


def _policy_surrogate(kind):
    """A surrogate of ``kind``'s policy at its init (random advantages), and the init."""
    pi = POLICIES[kind]
    params = pi.init(jax.random.PRNGKey(0))
    dist = lambda p: jax.vmap(pi.dist, in_axes=(None, 0))(p, OBS)  # noqa: E731
    old = dist(params)
    actions = jax.vmap(pi.sample)(jax.random.split(jax.random.PRNGKey(2), 64), old)
    old_lp = jax.vmap(pi.log_prob)(old, actions)
    return rl.Surrogate(
        logratio=lambda p: jax.vmap(pi.log_prob)(dist(p), actions) - old_lp,
        advantages=ADV, weights=jnp.full(64, 1 / 64), extra=lambda p: jnp.zeros([]), dist=dist,
        old_dist=old, divergence=jax.vmap(pi.kl), kl_weights=jnp.full(64, 1 / 64)), params


@pytest.mark.parametrize("kind", sorted(POLICIES))
def test_fisher_vector_product_is_the_hessian_of_the_kl(kind):
    # the categorical policy's distributions are log-probabilities, in which its KL is
    # linear: the curvature is all in the softmax, which the product must keep
    s, params = _policy_surrogate(kind)
    flat, unravel = ravel_pytree(params)
    v = jax.random.normal(jax.random.PRNGKey(4), flat.shape)
    hvp = jax.jvp(jax.grad(lambda x: rl.mean_kl(s, unravel(x))), (flat,), (v,))[1]
    assert float(jnp.linalg.norm(hvp)) > 1e-3 * float(jnp.linalg.norm(v))
    np.testing.assert_allclose(rl.fisher_vector_product(s, params)(v), hvp, rtol=1e-3,
                               atol=1e-5)


@pytest.mark.parametrize("kind", sorted(POLICIES))
def test_trpo_step_keeps_the_kl_bound_and_improves_the_surrogate(kind):
    s, params = _policy_surrogate(kind)
    new, _, m = jax.jit(lambda p: rl.trpo(max_kl=0.01).update(p, (), s))(params)
    assert float(m["step_accepted"]) == 1.0 and float(m["backtracks"]) <= 3
    assert float(rl.mean_kl(s, new)) <= 0.01
    assert float(rl.surrogate_value(s, new)) > float(rl.surrogate_value(s, params))
    assert float(rl.mean_kl(s, new)) > 0.002  # the step uses the trust region


def test_line_search_backtracks_when_it_must_and_rejects_when_nothing_passes():
    flat0, unravel = ravel_pytree(PARAMS)
    bowl = lambda c: lambda p: -c * jnp.sum((ravel_pytree(p)[0] - flat0) ** 2)  # noqa: E731
    _, _, plain = rl.trpo().update(PARAMS, (), _surrogate())
    new, _, m = rl.trpo().update(PARAMS, (), _surrogate(bowl(3.0)))
    assert float(m["backtracks"]) > float(plain["backtracks"])
    assert float(m["step_accepted"]) == 1.0 and float(m["surrogate_gain"]) > 0
    same, _, m = rl.trpo().update(PARAMS, (), _surrogate(bowl(1e6)))
    assert float(m["step_accepted"]) == 0.0 and float(m["backtracks"]) == 15
    for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(PARAMS), strict=True):
        np.testing.assert_array_equal(a, b)


def test_ppo_clip_improves_the_clipped_surrogate():
    import optax

    s = _surrogate()
    opt = rl.ppo_clip(optax.adam(1e-2), clip=0.2, epochs=10)
    new, _, m = opt.update(PARAMS, opt.init(PARAMS), s)
    assert float(m["surrogate_gain"]) > 0
    ratio = jnp.exp(s.logratio(new))
    assert float(jnp.abs(ratio - 1).max()) < 1.0


@pytest.mark.parametrize("make, match", [
    (lambda: rl.trpo(max_kl=0.0), "max_kl"),
    (lambda: rl.trpo(backtrack_ratio=1.0), "backtrack_ratio"),
    (lambda: rl.trpo(cg_iters=0), "cg_iters"),
    (lambda: rl.ppo_clip(None, clip=1.5), "clip"),
])
def test_bad_outer_options_are_named(make, match):
    with pytest.raises(ValueError, match=match):
        make()
