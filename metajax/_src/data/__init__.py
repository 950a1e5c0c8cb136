"""Few-shot datasets (Omniglot, mini-ImageNet), their on-disk cache and the episode sampler."""
