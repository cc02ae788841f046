"""Torch helpers every task shares: data, partitions, augmentations, models, evaluation, checkpoints."""
