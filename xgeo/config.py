"""The one configuration: ``params.yaml``, a profile overlay, and ``--set key.path=value`` overrides.

Resolution order (later wins):
  1. ``params.yaml`` (or the file given),
  2. ``overlays/<profile>.yaml`` when ``profile`` is not ``demo`` (the paper overlay is ``overlays/paper.yaml``),
  3. an experiment's overrides from ``experiments.<name>`` when an experiment is selected,
  4. ``--set`` overrides, in order.
Snakemake, DVC, the CLI and the tests all go through :func:`load_params`.

Every override (``--set``, an experiment's) must name a key params already has and give it a value of the type
``workflow/schemas/params.schema.yaml`` states for that key, or, where the schema says nothing, of the type of the
value it replaces (a number for a number, a list for a list; anything replaces a null): ``--set
model.moe.num_experts=many`` fails naming the key, the type expected and the value found.
"""
from __future__ import annotations

import copy
import functools
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

DEFAULT_PARAMS = "params.yaml"
ENV_PARAMS = "XGEO_PARAMS"


from .errors import XGeoError


class ConfigError(XGeoError, ValueError):
    """A configuration file or override is malformed; the message names the file or key."""


_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)$")


def parse_value(text: str) -> Any:
    """Parse an override value the way ``dvc exp run -S`` does: YAML scalars, lists and mappings (YAML 1.2
    numbers: ``1e-3`` is a float, as dvc reads it; PyYAML alone would keep it a string)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str) and _FLOAT.match(value.strip()):
        return float(value)
    return value


SCHEMA = Path("workflow") / "schemas" / "params.schema.yaml"
_TYPE_NAMES = {"integer": "an integer", "number": "a number", "boolean": "true or false", "string": "a string",
               "array": "a list", "object": "a mapping", "null": "null"}


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    return "object" if isinstance(value, Mapping) else type(value).__name__


@functools.lru_cache(maxsize=4)
def _read_schema(path: str) -> dict | None:
    p = Path(path)
    return yaml.safe_load(p.read_text()) if p.is_file() else None


def params_schema(params_path: str | os.PathLike | None = None) -> dict | None:
    """The params schema beside the params file (``workflow/schemas/``), else the one of this source tree."""
    places = ([Path(params_path).resolve().parent / SCHEMA] if params_path is not None else []) + \
        [Path(__file__).resolve().parents[1] / SCHEMA]
    for place in places:
        schema = _read_schema(str(place))
        if schema is not None:
            return schema
    return None


def _subschema(schema: Mapping | None, keys: list[str]) -> Mapping | None:
    """The schema of the value at ``keys`` (through properties / additionalProperties), or None when unstated."""
    node = schema
    for key in keys:
        if not isinstance(node, Mapping):
            return None
        props = node.get("properties") or {}
        if key in props:
            node = props[key]
        elif isinstance(node.get("additionalProperties"), Mapping):
            node = node["additionalProperties"]
        else:
            return None
    return node if isinstance(node, Mapping) and any(k in node for k in ("type", "enum", "anyOf", "pattern")) \
        else None


def _expected(sub: Mapping) -> str:
    if "enum" in sub:
        return "one of " + ", ".join(map(str, sub["enum"]))
    types = sub.get("type")
    types = types if isinstance(types, list) else [types] if types else []
    words = " or ".join(_TYPE_NAMES.get(t, t) for t in types) or "a value the schema allows"
    bounds = [f"{op} {sub[k]}" for k, op in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="),
                                               ("exclusiveMaximum", "<")) if k in sub]
    return words + (f" ({', '.join(bounds)})" if bounds else "")


def check_value(keys: list[str], value: Any, old: Any, schema: Mapping | None, source: str) -> None:
    """Refuse an override of the wrong type: the schema's for the key where it states one, else old's type."""
    name = ".".join(keys)
    sub = _subschema(schema, keys)
    found = f"found {value!r} ({_TYPE_NAMES.get(_kind(value), _kind(value))})"
    if sub is not None:
        import jsonschema

        try:
            jsonschema.validate(value, sub)
        except jsonschema.ValidationError:
            raise ConfigError(f"{source} {name}: expected {_expected(sub)} (params schema), {found}") from None
        return
    if old is None:
        return
    want, got = _kind(old), _kind(value)
    if want == got or (want == "number" and got == "integer"):
        return
    raise ConfigError(f"{source} {name}: expected {_TYPE_NAMES.get(want, want)} like the {old!r} it replaces, {found}")


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set expects key.path=value, got {item!r}")
    key, value = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set has an empty key segment in {item!r}")
    return key.split("."), parse_value(value)


def get_path(params: Mapping, dotted: str, default: Any = KeyError) -> Any:
    node: Any = params
    for part in dotted.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        else:
            if default is KeyError:
                raise ConfigError(f"params has no key {dotted!r} (missing {part!r})")
            return default
    return node


def set_path(params: dict, keys: list[str], value: Any, *, strict: bool = True, source: str = "--set",
             schema: Mapping | None = None) -> None:
    node = params
    for i, part in enumerate(keys[:-1]):
        if part not in node:
            if strict:
                raise ConfigError(
                    f"{source}: unknown key {'.'.join(keys)!r}: params has no {'.'.join(keys[: i + 1])!r}"
                )
            node[part] = {}
        if not isinstance(node[part], dict):
            raise ConfigError(f"{source}: {'.'.join(keys[: i + 1])!r} is a value, not a mapping")
        node = node[part]
    if strict and keys[-1] not in node:
        raise ConfigError(
            f"{source}: unknown key {'.'.join(keys)!r}; known keys under "
            f"{'.'.join(keys[:-1]) or 'the top level'}: {sorted(node)}"
        )
    if strict:
        check_value(keys, value, node.get(keys[-1]), schema, source)
    node[keys[-1]] = value


def deep_merge(base: dict, other: Mapping) -> dict:
    out = copy.deepcopy(base)
    for key, value in other.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: file not found (expected a YAML mapping of parameters)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, found {type(data).__name__}")
    return data


def apply_overrides(params: dict, overrides: Iterable[str] | Mapping[str, Any], *, source: str = "--set",
                    schema: Mapping | None = None) -> dict:
    """``overrides`` (``key.path=value`` strings or a mapping of dotted keys) applied to a copy of ``params``; each
    key must exist and each value have the type ``schema`` (else the replaced value) gives it."""
    out = copy.deepcopy(params)
    items = overrides.items() if isinstance(overrides, Mapping) else (parse_override(o) for o in overrides)
    for keys, value in items:
        if isinstance(keys, str):
            keys = keys.split(".")
        set_path(out, list(keys), value, source=source, schema=schema)
    return out


def default_params_path() -> Path:
    return Path(os.environ.get(ENV_PARAMS, DEFAULT_PARAMS))


def load_params(
    path: str | os.PathLike | None = None,
    overrides: Iterable[str] = (),
    experiment: str | None = None,
) -> dict:
    """Load params.yaml, apply the profile overlay, the experiment's overrides and ``--set`` overrides."""
    path = Path(path) if path is not None else default_params_path()
    overrides = list(overrides)
    params = read_yaml(path)
    # the profile may itself be overridden on the command line
    profile = params.get("profile", "demo")
    for o in overrides:
        keys, value = parse_override(o)
        if keys == ["profile"]:
            profile = value
    if profile and profile != "demo":
        overlay = path.parent / "overlays" / f"{profile}.yaml"
        if not overlay.exists():
            raise ConfigError(f"profile {profile!r}: overlay file {overlay} not found")
        params = deep_merge(params, read_yaml(overlay))
        params["profile"] = profile
    schema = params_schema(path)
    if experiment is not None:
        params = apply_overrides(params, experiment_overrides(params, experiment, path), source=f"experiments.{experiment}",
                                 schema=schema)
        params["experiment"] = experiment
    params = apply_overrides(params, overrides, schema=schema)
    return params


def experiment_overrides(params: Mapping, experiment: str, path: str | os.PathLike = "params") -> Mapping:
    """The dotted overrides of ``experiments.<experiment>``."""
    experiments = params.get("experiments") or {}
    if experiment not in experiments:
        raise ConfigError(f"{path}: experiment {experiment!r} is not defined under 'experiments' "
                          f"(known: {sorted(experiments)})")
    return experiments[experiment] or {}


def pretraining_of(params: Mapping, experiment: str) -> str:
    """The experiment whose checkpoint ``experiment`` finetunes from.

    An experiment that overrides only ``finetune.*`` keys shares the pretraining of ``tables.base_experiment``.
    """
    overrides = experiment_overrides(params, experiment)
    if overrides and all(str(k).startswith("finetune.") for k in overrides):
        return params["tables"]["base_experiment"]
    return experiment


def dumps(params: Mapping) -> str:
    return json.dumps(params, sort_keys=True, default=str)


def flatten(params: Mapping, prefix: str = "") -> dict[str, Any]:
    """Flatten nested params to dotted keys (for MLflow params)."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out
