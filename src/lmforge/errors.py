"""User-facing errors: one line that names what is wrong and where, and a non-zero exit code."""


class LmforgeError(Exception):
    """An error caused by the user's input (recipe, data, checkpoint, arguments).

    The CLI prints ``error: <message>`` on one line and exits with ``exit_code``; the traceback is
    shown only with ``--debug``.
    """

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # always one line


class RecipeError(LmforgeError):
    """A recipe key or value is wrong."""


class DataError(LmforgeError):
    """Input data is missing, empty or unusable."""


class CheckpointError(LmforgeError):
    """A checkpoint is missing, corrupt, truncated or incompatible."""


class TrainingError(LmforgeError):
    """Training cannot go on (for example: too many non-finite losses in a row)."""

    exit_code = 3


class TuneError(LmforgeError):
    """A hyperparameter search cannot start: a bad search space, sampler, pruner or storage."""


class FinetuneError(LmforgeError):
    """Fine-tuning cannot start: a base that does not fit the run, a freezing pattern or LoRA target that
    matches nothing."""


class MergeError(LmforgeError):
    """A merge cannot start: too few inputs, inputs of different models or tokenizers, settings that do not fit."""


class CompressError(LmforgeError):
    """A compression variant cannot be made: settings that do not fit the model, no calibration data."""


class ExplainError(LmforgeError):
    """An explanation cannot start: an empty text, a target that does not fit, an unknown layer or method, a label
    the classifier does not have."""


class AttackError(LmforgeError):
    """An attack cannot start: a budget outside its range, an unknown attack, a model without the head the attack
    needs, examples that do not fit the model's context."""


class SecureError(LmforgeError):
    """A key, an encrypted file or a signature is unusable: an unknown or malformed key file, a key of the wrong
    kind, the wrong key or passphrase, a tampered or truncated envelope, a missing or mismatched signature."""
