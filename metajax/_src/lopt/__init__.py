"""Learned optimizers: meta-parameters θ -> an Optax transformation, and their outer trainers."""
