"""Hyperparameter search (``lmforge tune``) on Optuna: the search space in the recipe's ``tune:`` section,
grid / random / TPE samplers, median / successive-halving / Hyperband pruners fed by the training loop's
validation loss, studies in an RDB storage that survive kills and are shared by many workers.

Only ``lmforge.tune.config`` is imported by the recipe; everything else (Optuna included) is imported
when a study runs.
"""
