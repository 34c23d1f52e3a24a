"""Training: targets, patch sampling, augmentation, losses and the loop (AMP, EMA, resume, DDP).

Entry point: :func:`czii.training.loop.train` (``czii train``).
"""
