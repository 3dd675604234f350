"""The search space against the recipe: checked before any trial runs, ordered so that the parameters a
condition names come first, sampled from an Optuna trial, enumerated for the grid sampler, and applied
to the recipe exactly like ``--set`` overrides."""

from __future__ import annotations

import copy
import difflib
import itertools

import yaml
from pydantic import ValidationError

from lmforge.errors import RecipeError, TuneError
from lmforge.recipe import RunConfig, apply_override, build_config
from lmforge.tune.config import SearchParam

SEARCHABLE_SECTIONS = ("train", "model")
NOT_SEARCHABLE = {
    "train.eval_every": "sets when trials are measured and pruned, not a hyperparameter",
    "train.eval_batches": "sets how trials are measured, not a hyperparameter",
    "train.device": "sets where trials run, not a hyperparameter",
}
MAX_GRID_POINTS = 10_000


def yaml_text(value) -> str:
    """``value`` as YAML text that reads back as the same value (``1e-05`` would read as a string)."""
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def assignment(key: str, value) -> str:
    return f"{key}={yaml_text(value)}"


def base_raw(cfg: RunConfig) -> dict:
    """The recipe as a raw dict without its ``tune`` section: what every trial starts from."""
    raw = cfg.model_dump(mode="json")
    raw.pop("tune", None)
    return raw


def apply_params(cfg: RunConfig, params: dict, name: str) -> RunConfig:
    """The recipe with sampled values set as dotted overrides and validated like ``--set``."""
    raw = base_raw(cfg)
    for key, value in params.items():
        apply_override(raw, assignment(key, value))
    raw["name"] = name
    return build_config(raw, name)


# --- checks against the recipe --------------------------------------------------------------------
def check_space(cfg: RunConfig) -> list[str]:
    """Reject a space that cannot work; return its keys in sampling order (conditions first)."""
    space = cfg.tune.space
    if not space:
        raise TuneError("tune.space: the search space is empty; add a parameter, e.g. "
                        "train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}")
    base = base_raw(cfg)
    for key, param in space.items():
        _check_key(key)
        for value in _probe_values(param):
            _check_value(base, space, key, value)
    order = sampling_order(space)
    _check_reachable(space)
    return order


def _check_key(key: str) -> None:
    where = f"tune.space.{key}"
    parts = key.split(".")
    if len(parts) < 2 or parts[0] not in SEARCHABLE_SECTIONS or not all(parts):
        raise TuneError(f"{where}: only train.* and model.* keys can be searched (data, tokenizer and pack "
                        "are prepared once, before the study)")
    if key in NOT_SEARCHABLE:
        raise TuneError(f"{where}: {NOT_SEARCHABLE[key]}")


def _probe_values(param: SearchParam) -> list:
    """Values that show whether the key takes this kind of value: the ends and, for floats, one inside."""
    if param.type == "categorical":
        return list(param.choices)
    if param.type == "int" or param.low == param.high:
        return [param.low, param.high]
    inside = param.low * (param.high / param.low) ** 0.37 if param.log else param.low + 0.37 * (param.high - param.low)
    return [param.low, inside, param.high]


def _check_value(base: dict, space: dict, key: str, value) -> None:
    where = f"tune.space.{key}"
    raw = copy.deepcopy(base)
    try:
        apply_override(raw, assignment(key, value))
    except RecipeError as exc:
        raise TuneError(f"{where}: not a recipe key ({str(exc).partition(': ')[2]})") from None
    try:
        RunConfig.model_validate(raw)
    except ValidationError as exc:
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden" and (loc == key or key.startswith(loc + ".")):
                raise TuneError(f"{where}: not a recipe key{_did_you_mean(loc)}") from None
            if loc == key and err["type"] == "int_from_float":
                raise TuneError(f"{where}: {key} takes whole numbers; use type: int (this float range gives values "
                                f"like {value:.3g})") from None
            if loc == key or loc.startswith(key + "."):
                raise TuneError(f"{where}: {value!r} is not a valid value: {msg}") from None
            others = [k for k in space if k != key and k.startswith(loc + ".")]
            if key.startswith(loc + ".") and not others:
                # a check across keys of one section that fails whatever else is searched
                raise TuneError(f"{where}: {value!r} is not a valid value: {loc}: {msg}") from None
            # otherwise it depends on other searched keys: such a combination fails as a trial


def _did_you_mean(unknown: str) -> str:
    """A close recipe key for the unknown dotted key ``unknown``, walking the nested config models."""
    *parents, last = unknown.split(".")
    model = RunConfig
    for part in parents:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return ""
        model = field.annotation
    close = difflib.get_close_matches(last, list(getattr(model, "model_fields", {})), n=1)
    return f" (did you mean {'.'.join([*parents, close[0]])}?)" if close else ""


# --- conditions ------------------------------------------------------------------------------------
def _as_list(values) -> list:
    return values if isinstance(values, list) else [values]


def _matches(value, allowed) -> bool:
    return any(value == a and type(value) is type(a) for a in _as_list(allowed))


def sampling_order(space: dict[str, SearchParam]) -> list[str]:
    """Keys with every condition's parameter before the parameters that depend on it."""
    for key, param in space.items():
        for other, allowed in (param.when or {}).items():
            where = f"tune.space.{key}.when"
            if other == key:
                raise TuneError(f"{where}: {key} cannot depend on itself")
            if other not in space:
                raise TuneError(f"{where}: {other} is not a parameter of tune.space (a condition names another "
                                "searched categorical parameter)")
            if space[other].type != "categorical":
                raise TuneError(f"{where}: {other} is a {space[other].type} range; a condition needs a categorical "
                                "parameter")
            for value in _as_list(allowed):
                if not _matches(value, space[other].choices):
                    raise TuneError(f"{where}.{other}: {value!r} is not one of its choices {space[other].choices}")
    order: list[str] = []
    visiting: list[str] = []

    def visit(key: str) -> None:
        if key in order:
            return
        if key in visiting:
            cycle = visiting[visiting.index(key):] + [key]
            raise TuneError(f"tune.space.{key}.when: the conditions form a cycle ({' -> '.join(cycle)})")
        visiting.append(key)
        for other in space[key].when or {}:
            visit(other)
        visiting.pop()
        order.append(key)

    for key in space:
        visit(key)
    return order


def is_active(param: SearchParam, params: dict) -> bool:
    """Whether ``param`` is sampled, given the values of the parameters sampled before it."""
    return all(other in params and _matches(params[other], allowed) for other, allowed in (param.when or {}).items())


def _ancestors(space: dict, key: str) -> list[str]:
    found: list[str] = []
    stack = list(space[key].when or {})
    while stack:
        other = stack.pop()
        if other not in found:
            found.append(other)
            stack.extend(space[other].when or {})
    return found


def _check_reachable(space: dict) -> None:
    """A conditional parameter must be active for at least one combination of the choices it depends on."""
    for key, param in space.items():
        if not param.when:
            continue
        ancestors = _ancestors(space, key)
        options = [space[a].choices for a in ancestors]
        if _count(options) > 100_000:
            continue  # too many to enumerate; such a parameter simply never shows up if it is unreachable
        for combo in itertools.product(*options):
            if _active_in(space, key, dict(zip(ancestors, combo, strict=True))):
                break
        else:
            raise TuneError(f"tune.space.{key}.when: contradictory conditions: {key} can never be active (no "
                            "choice of the parameters it depends on satisfies its conditions and theirs)")


def _active_in(space: dict, key: str, values: dict) -> bool:
    return all(_active_in(space, other, values) and _matches(values[other], allowed)
               for other, allowed in (space[key].when or {}).items())


def _count(options: list[list]) -> int:
    total = 1
    for o in options:
        total *= len(o)
    return total


# --- sampling --------------------------------------------------------------------------------------
def suggest(trial, space: dict[str, SearchParam], order: list[str]) -> dict:
    """Sample every active parameter from an Optuna trial, conditions first."""
    params: dict = {}
    for key in order:
        p = space[key]
        if not is_active(p, params):
            continue
        if p.type == "categorical":
            params[key] = trial.suggest_categorical(key, p.choices)
        elif p.type == "int":
            params[key] = trial.suggest_int(key, p.low, p.high, step=p.step or 1, log=p.log)
        else:
            params[key] = trial.suggest_float(key, p.low, p.high, step=p.step, log=p.log)
    return params


def grid_points(space: dict[str, SearchParam], order: list[str]) -> list[dict]:
    """Every distinct combination of the active parameters (an inactive one does not multiply the grid)."""
    for key in order:
        if space[key].values() is None:
            raise TuneError(f"tune.space.{key}: the grid sampler needs a step for a float range (or type: categorical)")
    points: list[dict] = [{}]
    for key in order:
        p = space[key]
        points = [new for pt in points for new in ([{**pt, key: v} for v in p.values()] if is_active(p, pt) else [pt])]
        if len(points) > MAX_GRID_POINTS:
            raise TuneError(f"tune.sampler.kind: grid: the space has more than {MAX_GRID_POINTS:,} points; "
                            "use larger steps, fewer choices, or the tpe or random sampler")
    return points
