"""lmforge's models inside lm-evaluation-harness: an ``LM`` registered as ``lmforge`` in lm-eval's model registry.

Every request goes through lmforge's own scorer (``evaluate.scoring``), so lm-eval and ``lmforge eval`` compute
the same numbers: ``loglikelihood`` through ``loglikelihoods`` (batched, prefix and shared-context reuse),
``loglikelihood_rolling`` through ``rolling_loglikelihood`` with a stride of the model's context length (lm-eval's
disjoint windows), ``generate_until`` through ``greedy_continuations`` (greedy only).

How lm-eval finds it. lm-eval 0.4.13 discovers no external model by itself: its registry is filled by
``lm_eval.models`` (a fixed name -> module table) and by whatever module calls ``register_model`` before the
model is looked up; it reads no entry-point group, and ``--include_path`` indexes task YAML only (a model class
cannot be loaded through it: tasks are loaded after the model is built). So the module must be imported first.
Two ways that do it:

- the command line: this module's ``main`` is lm-eval's own CLI after the import, installed as
  ``lmforge-lm-eval`` (or ``python -m lmforge.evaluate.lm_eval_model``), taking lm-eval's arguments unchanged::

      lmforge-lm-eval run --model lmforge --model_args run_dir=runs/default,checkpoint=best,batch_size=8 \\
          --tasks my_task --include_path my_tasks/

  (``lmforge-lm-eval --model lmforge ...`` without ``run`` works too, as with ``lm_eval``.) The plain
  ``lm_eval --model lmforge`` fails ("no model for this name found"): nothing imports this module in its process.
- Python: ``import lmforge.evaluate.lm_eval_model`` and then ``lm_eval.simple_evaluate(model="lmforge",
  model_args={"run_dir": ...}, ...)``, or pass ``LmforgeLM(run_dir=...)`` itself as ``model``.

``model_args``: ``run_dir`` (required: a run directory with a tokenizer and a checkpoint), ``checkpoint``
(what ``lmforge eval --checkpoint`` takes, through ``checkpoint.load.pick``: ``latest``, ``best``, ``selected``,
or a path; default: the one ``eval.select`` chose, else the latest),
``batch_size`` (default 8), ``device`` (default cpu). lm-eval's own ``--batch_size``/``--device`` apply when
``model_args`` does not set the same key (``model_args`` wins: lm-eval always passes its defaults, batch size 1
and device cuda:0; that default device falls back to the CPU without CUDA, as lm-eval's HF backend does).
An unknown key, a missing ``run_dir``, a bad checkpoint or batch size is one line (``LmforgeError``); ``main``
prints it as ``error: ...`` and exits 2.

lm_eval is imported by this module only; ``import lmforge`` and every other module work without it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError:
    raise ImportError("lmforge.evaluate.lm_eval_model needs lm-evaluation-harness: pip install 'lm_eval>=0.4.13,<0.5' "
                      "(requirements-dev.txt pins it)") from None

from lmforge.checkpoint.load import check_fits, checkpoint_dims, load_model, pick, require_language_model
from lmforge.data.tokenizer import load_tokenizer
from lmforge.errors import LmforgeError
from lmforge.evaluate.scoring import greedy_continuations, loglikelihoods, rolling_loglikelihood
from lmforge.rundir import RunDir

logger = logging.getLogger(__name__)

MODEL_NAME = "lmforge"
MODEL_ARGS = ("run_dir", "checkpoint", "batch_size", "device")
DEFAULT_BATCH_SIZE = 8
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's default (HFLM.max_gen_toks), capped at half the model's context length
# generation kwargs that change nothing when decoding is greedy (do_sample False, temperature 0)
GREEDY_NEUTRAL = {"do_sample", "temperature", "top_p", "top_k", "min_p"}


class LmforgeLM(LM):
    """A run directory's checkpoint as an lm-eval model (see the module docstring for its arguments)."""

    def __init__(self, run_dir: str | Path | None = None, checkpoint: str | Path | None = None,
                 batch_size: int | str | None = None, device: str | None = None, **unknown):
        super().__init__()
        # lm-eval passes max_batch_size (for batch_size=auto) whatever the model; it means nothing here
        unknown.pop("max_batch_size", None)
        if unknown:
            raise LmforgeError(f"lmforge model_args: unknown key {sorted(unknown)[0]!r} "
                               f"(known: {', '.join(MODEL_ARGS)})")
        if run_dir is None or str(run_dir).strip() == "":
            raise LmforgeError("lmforge model_args: run_dir is required (run_dir=RUN_DIR: a run directory with "
                               "a tokenizer and a checkpoint)")
        run = RunDir(Path(str(run_dir)))
        if not run.root.is_dir():
            raise LmforgeError(f"lmforge model_args: run_dir {run.root} is not a directory")
        self.batch_size = _batch_size(batch_size)
        self._device = _device(device)
        self.tokenizer = load_tokenizer(run.tokenizer)
        path = pick(run, None if checkpoint is None else str(checkpoint))
        require_language_model(path, "lm-evaluation-harness")
        dims = checkpoint_dims(path)
        vocab = self.tokenizer.get_vocab_size()
        if dims.vocab_size != vocab:
            raise LmforgeError(f"checkpoint {path} does not fit {run.root}: it holds a model over "
                               f"{dims.vocab_size} tokens, the run's tokenizer has {vocab}")
        if run.recipe.exists():  # a run lmforge made: the checkpoint must also be the recipe's model
            from lmforge.recipe import build_config, read_yaml

            cfg = build_config(read_yaml(run.recipe), str(run.recipe))
            check_fits(path, dims, cfg.model.dims(vocab), run.root)
        loaded = load_model(path, self._device)
        self.model, self.checkpoint_path, self.step = loaded.model, loaded.path, loaded.step

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> LmforgeLM:
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None) -> LmforgeLM:
        """``arg_dict`` (model_args) over lm-eval's own settings (``additional_config``: its --batch_size,
        --device, whose defaults it always passes)."""
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        if "device" not in arg_dict and str(extra.get("device", "")).startswith("cuda") \
                and not torch.cuda.is_available():
            # lm-eval's CLI passes device=cuda:0 unless told otherwise; like its HF backend, run on the CPU then
            logger.info("lmforge model: no CUDA device is available; using the CPU")
            extra.pop("device")
        return cls(**{**extra, **arg_dict})

    @property
    def context_length(self) -> int:
        return self.model.dims.context_length

    def get_model_info(self) -> dict:
        """What lm-eval records in its results' config."""
        return {"model_checkpoint": str(self.checkpoint_path), "model_step": self.step,
                "model_num_parameters": sum(p.numel() for p in self.model.parameters())}

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        pairs = [tuple(r.args) for r in requests]
        scores = loglikelihoods(self.model, self.tokenizer, pairs, batch_size=self.batch_size, device=self._device)
        results = []
        for pair, score in zip(pairs, scores):
            result = (score.logprob, score.is_greedy)
            self.cache_hook.add_partial("loglikelihood", pair, result)
            results.append(result)
        return results

    def loglikelihood_rolling(self, requests) -> list[float]:
        results = []
        for request in requests:
            (text,) = request.args
            ids = self.tokenizer.encode(text, add_special_tokens=False).ids
            score = rolling_loglikelihood(self.model, ids, device=self._device, stride=self.context_length,
                                          batch_size=self.batch_size)
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), score.logprob)
            results.append(score.logprob)
        return results

    def generate_until(self, requests) -> list[str]:
        """Greedy continuations cut at ``until``, at most ``max_gen_toks`` tokens; sampling is refused."""
        results: list[str | None] = [None] * len(requests)
        groups: dict[tuple, tuple[list[str] | None, int, list[int]]] = {}
        for i, request in enumerate(requests):
            context, gen_kwargs = request.args
            until, max_gen_toks = self._generation_settings(gen_kwargs)
            groups.setdefault((tuple(until), max_gen_toks), (until, max_gen_toks, []))[2].append(i)
        for until, max_gen_toks, indices in groups.values():
            texts = greedy_continuations(self.model, self.tokenizer, [requests[i].args[0] for i in indices],
                                         max_gen_toks, until)
            for i, text in zip(indices, texts):
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
                results[i] = text
        return results  # type: ignore[return-value]

    def _generation_settings(self, gen_kwargs: dict | None) -> tuple[list[str], int]:
        """(stop strings, max new tokens) of one request's generation kwargs, normalised as lm-eval's HF
        backend does (``max_new_tokens`` and the other aliases, ``temperature`` 0 means greedy)."""
        from lm_eval.models.utils import normalize_gen_kwargs

        if gen_kwargs is None:
            gen_kwargs = {}
        if not isinstance(gen_kwargs, dict):
            raise LmforgeError(f"generate_until: generation kwargs must be a dict, got {gen_kwargs!r}")
        default = min(DEFAULT_MAX_GEN_TOKS, self.context_length // 2)
        try:
            kwargs = dict(normalize_gen_kwargs(gen_kwargs, default))
        except (TypeError, ValueError) as exc:
            raise LmforgeError(f"generate_until: bad generation kwargs {gen_kwargs!r}: {exc}") from None
        if kwargs.get("do_sample"):
            raise LmforgeError(f"generate_until: the lmforge model decodes greedily only; got do_sample=True "
                               f"(temperature {kwargs.get('temperature')}): give do_sample=False or temperature=0")
        until = kwargs.pop("until") or []
        max_gen_toks = kwargs.pop("max_gen_toks")
        other = sorted(set(kwargs) - GREEDY_NEUTRAL)
        if other:
            raise LmforgeError(f"generate_until: generation kwarg {other[0]!r} is not supported by the lmforge "
                               f"model (greedy decoding; supported: until, max_gen_toks, "
                               f"{', '.join(sorted(GREEDY_NEUTRAL))})")
        if isinstance(until, str):
            until = [until]
        if not all(isinstance(s, str) for s in until):
            raise LmforgeError(f"generate_until: until must be a string or a list of strings, got {until!r}")
        if max_gen_toks < 1:
            raise LmforgeError(f"generate_until: max_gen_toks must be at least 1, got {max_gen_toks}")
        return list(until), max_gen_toks


def _device(value) -> torch.device:
    try:
        device = torch.device("cpu" if value is None else str(value))
    except RuntimeError:
        raise LmforgeError(f"lmforge model_args: device {value!r} is not a torch device (cpu, cuda, "
                           "cuda:1, ...)") from None
    if device.type == "cuda" and (not torch.cuda.is_available()
                                  or (device.index or 0) >= torch.cuda.device_count()):
        raise LmforgeError(f"lmforge model_args: device {value!r}: no such CUDA device "
                           f"({torch.cuda.device_count()} available)")
    return device


def _batch_size(value) -> int:
    if value is None:
        return DEFAULT_BATCH_SIZE
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LmforgeError(f"lmforge model_args: batch_size must be a whole number >= 1, got {value!r} "
                           "(auto is not supported)")
    return value


# Registered under the importable name only: ``python -m`` runs this file as __main__ too, and a second class
# under the same name would collide in lm-eval's registry (__main__ below imports the real module instead).
if __name__ != "__main__":
    register_model(MODEL_NAME)(LmforgeLM)


def main(argv: Sequence[str] | None = None) -> int:
    """lm-eval's command line with the ``lmforge`` model registered (``lmforge-lm-eval``)."""
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lmforge-lm-eval", *(sys.argv[1:] if argv is None else argv)]
    try:
        cli_evaluate()
    except LmforgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    from lmforge.evaluate.lm_eval_model import main as _main

    sys.exit(_main())
