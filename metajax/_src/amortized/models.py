"""The neural processes of the literature as assemblies of :mod:`.modules`, and their apply."""

from __future__ import annotations

from collections.abc import Sequence

import jax

from metajax._src.amortized.modules import (
    DeterministicPath,
    GaussianDecoder,
    LatentPath,
    NeuralProcess,
)
from metajax._src.core.types import Params, TaskBatch


def cnp(*, encoder: Sequence[int] = (128, 128, 128, 128), decoder: Sequence[int] = (128, 128),
        y_dim: int = 1) -> NeuralProcess:
    """Conditional neural process (Garnelo et al., 2018a): MLP encoder, mean, Gaussian decoder.

    Defaults are DeepMind's notebook: encoder [128]x4, decoder [128, 128, 2].
    """
    return NeuralProcess(GaussianDecoder(sizes=tuple(decoder), y_dim=y_dim),
                         deterministic=DeterministicPath(sizes=tuple(encoder)))


def latent_np(*, encoder: Sequence[int] = (128, 128, 128, 128), latent_dim: int = 128,
              decoder: Sequence[int] = (128, 128), deterministic_path: bool = True,
              y_dim: int = 1) -> NeuralProcess:
    """Latent neural process (Garnelo et al., 2018b), trained on its ELBO (:func:`elbo`).

    A global Gaussian latent from a mean-aggregated encoder; with ``deterministic_path`` (the
    default, as the "NP" of Kim et al. 2019 and DeepMind's notebook) also the CNP's path.
    """
    return NeuralProcess(
        GaussianDecoder(sizes=tuple(decoder), y_dim=y_dim),
        deterministic=DeterministicPath(sizes=tuple(encoder)) if deterministic_path else None,
        latent=LatentPath(sizes=tuple(encoder), latent_dim=latent_dim))


def attentive_np(*, encoder: Sequence[int] = (128, 128, 128, 128), latent_dim: int = 128,
                 decoder: Sequence[int] = (128, 128), self_attention: int = 2,
                 num_heads: int = 8, y_dim: int = 1) -> NeuralProcess:
    """Attentive neural process (Kim et al., 2019).

    Self-attention in both encoders (``self_attention`` layers of ``num_heads`` heads, with
    residuals and layer norm), multi-head cross-attention from each target to the context in
    the deterministic path, and the latent path of :func:`latent_np`.
    """
    return NeuralProcess(
        GaussianDecoder(sizes=tuple(decoder), y_dim=y_dim),
        deterministic=DeterministicPath(sizes=tuple(encoder), self_attention=self_attention,
                                        cross_attention=True, num_heads=num_heads),
        latent=LatentPath(sizes=tuple(encoder), latent_dim=latent_dim,
                          self_attention=self_attention, num_heads=num_heads))


def process_apply(module: NeuralProcess):
    """``apply(params, context, x_target, *, key=None, target=None)`` of a Flax module."""

    def apply(params: Params, context, x_target, *, key=None, target=None):
        return module.apply({"params": params}, context, x_target, key=key, target=target)

    return apply


def init_process(module: NeuralProcess, key: jax.Array, tasks: TaskBatch) -> Params:
    """The module's parameters, shaped by the first task of ``tasks`` (a batch of ``Points``)."""
    first = jax.tree.map(lambda a: a[0], tasks)
    k_init, k_z = jax.random.split(key)
    return module.init(k_init, first.support, first.query.x, key=k_z,
                       target=first.query)["params"]
