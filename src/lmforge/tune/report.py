"""What a study leaves in ``<run>/tune/``: trials.csv, best.yaml (the best trial's whole recipe, ready for
``lmforge run``), importances.json, history.png and parallel_coordinates.png, summary.json."""

from __future__ import annotations

import csv
import io
import math
import warnings
from pathlib import Path

import yaml

from lmforge.core import progress
from lmforge.core.atomic import atomic_write_json, atomic_write_text, atomic_write_with
from lmforge.recipe import RunConfig
from lmforge.tune.space import apply_params
from lmforge.tune.storage import shown_url, study_name

COLUMNS = ["number", "state", "value", "steps", "tokens", "duration_s", "worker"]


def _retries(trials) -> dict[int, int]:
    """Trial number -> the number of the trial that retried it."""
    found = {}
    for t in trials:
        history = t.system_attrs.get("retry_history") or []
        if history:
            found[history[-1]] = t.number
    return found


def reason(t, retried_by: dict[int, int]) -> str:
    attrs, state = t.user_attrs, t.state.name
    if state == "PRUNED":
        return attrs.get("prune_reason") or "pruned"
    if state == "FAIL":
        text = attrs.get("fail_reason") or ("interrupted (Ctrl-C)" if attrs.get("interrupted") else
                                            "stale: its process stopped without finishing (no heartbeat)")
        if t.number in retried_by:
            text += f"; retried as trial {retried_by[t.number]}"
        return text
    return {"RUNNING": "running", "WAITING": "queued"}.get(state, "")


def trial_rows(trials, param_keys: list[str]) -> list[dict]:
    retried_by = _retries(trials)
    rows = []
    for t in trials:
        row = {"number": t.number, "state": t.state.name, "value": t.value if t.state.name == "COMPLETE" else None,
               "steps": t.user_attrs.get("steps"), "tokens": t.user_attrs.get("tokens"),
               "duration_s": t.user_attrs.get("duration_s"), "worker": t.user_attrs.get("worker")}
        params = t.params or t.system_attrs.get("fixed_params", {})
        row.update({k: params.get(k) for k in param_keys})
        row["reason"] = reason(t, retried_by)
        rows.append(row)
    return rows


def best_trial(trials):
    done = [t for t in trials if t.state.name == "COMPLETE" and t.value is not None and math.isfinite(t.value)]
    return min(done, key=lambda t: (t.value, t.number)) if done else None


def best_recipe_yaml(cfg: RunConfig, trial, url: str) -> str:
    best = apply_params(cfg, trial.params, f"{cfg.name}-best")
    body = {k: v for k, v in best.model_dump(mode="json").items() if k != "tune"}
    header = (f"# The best trial ({trial.number}, val_loss {trial.value:.4f}) of study {study_name(cfg)!r} in "
              f"{shown_url(url)}\n# Train it:   lmforge run <this file>\n")
    return header + yaml.safe_dump(body, sort_keys=False)


# PED-ANOVA, computed by Optuna itself (its fANOVA and MDI evaluators need scikit-learn, which a plain install
# lacks): how much each parameter's values among the best complete trials differ from its values among all of them
IMPORTANCE_MIN_TRIALS = 3  # the best ones (at least 2) must be fewer than all of them
IMPORTANCE_TOP_SHARE = 0.1  # Optuna's target_quantile: the best 10%, here at least 2 trials


def importance_evaluator(n_complete: int):
    from optuna.importance import PedAnovaImportanceEvaluator

    return PedAnovaImportanceEvaluator(target_quantile=max(IMPORTANCE_TOP_SHARE, 2 / n_complete))


def _importances(study) -> dict:
    """Normalized parameter importances of the complete trials, or none and the reason (too few trials, every
    parameter irrelevant to which trials are best, or an error): never importances made up as equal."""
    import optuna
    from optuna.trial import TrialState

    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if t.value is not None and math.isfinite(t.value)]
    if len(complete) < IMPORTANCE_MIN_TRIALS:
        return {"importances": {}, "not_computed": f"{len(complete)} complete trial(s) with a finite loss; "
                                                   f"importances need at least {IMPORTANCE_MIN_TRIALS}"}
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # normalize=False
            raw = optuna.importance.get_param_importances(study, evaluator=importance_evaluator(len(complete)),
                                                          normalize=False)
    except Exception as exc:  # noqa: BLE001 - the rest of the report is written all the same
        return {"importances": {}, "not_computed": " ".join(f"{type(exc).__name__}: {exc}".split())}
    equal = [" ".join(str(w.message).split()) for w in seen if "importances will be equal" in str(w.message)]
    if equal:
        return {"importances": {}, "not_computed": f"the losses do not set the best trials apart ({equal[0]})"}
    total = sum(raw.values())
    if not total > 0:
        return {"importances": {},
                "not_computed": "no parameter takes other values in the best trials than in the rest"}
    return {"importances": {k: v / total for k, v in raw.items()}}


def _plots(study, tune_dir: Path) -> dict[str, str]:
    """PNG plots through Optuna's matplotlib backend; a plot that cannot be drawn is named with the reason."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from optuna.visualization import matplotlib as oplt
    except ImportError as exc:
        return {"plots": f"not drawn: {exc}"}
    outcome = {}
    for name, draw in (("history.png", oplt.plot_optimization_history),
                       ("parallel_coordinates.png", oplt.plot_parallel_coordinate)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = draw(study)
            fig = ax.figure
            fig.set_size_inches(8, 5)
            fig.tight_layout()
            atomic_write_with(tune_dir / name, lambda tmp, fig=fig: fig.savefig(tmp, format="png", dpi=100))
            outcome[name] = "written"
        except Exception as exc:  # noqa: BLE001 - a missing plot must not lose the rest of the report
            outcome[name] = f"not drawn: {' '.join(str(exc).split())}"
        finally:
            plt.close("all")
    return outcome


def write_report(study, cfg: RunConfig, tune_dir: Path, url: str) -> dict:
    trials = study.get_trials(deepcopy=False)
    keys = list(cfg.tune.space)
    rows = trial_rows(trials, keys)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*COLUMNS, *keys, "reason"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(tune_dir / "trials.csv", buffer.getvalue())
    counts = {s: sum(r["state"] == s for r in rows) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")}
    summary = {"study": study_name(cfg), "storage": shown_url(url), "trials": len(rows), "counts": counts,
               "tokens": sum(int(t.user_attrs.get("tokens") or 0) for t in trials), "best": None,
               "tune_dir": str(tune_dir)}
    best = best_trial(trials)
    if best is not None:
        atomic_write_text(tune_dir / "best.yaml", best_recipe_yaml(cfg, best, url))
        summary["best"] = {"number": best.number, "value": best.value, "params": best.params,
                           "recipe": str(tune_dir / "best.yaml")}
    importances = _importances(study)
    if not importances["importances"]:
        progress.info(f"tune: parameter importances not computed: {importances['not_computed']}")
    atomic_write_json(tune_dir / "importances.json", importances)
    summary.update(importances)
    summary["plots"] = _plots(study, tune_dir)
    atomic_write_json(tune_dir / "summary.json", summary)
    summary["rows"] = rows
    return summary
