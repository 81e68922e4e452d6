"""The one configuration: ``params.yaml``, a profile overlay, and ``--set key.path=value`` overrides.

Resolution order (later wins):
  1. ``params.yaml`` (or the file given),
  2. ``overlays/<profile>.yaml`` when ``profile`` is not ``demo`` (the paper overlay is ``overlays/paper.yaml``),
  3. an experiment's overrides from ``experiments.<name>`` when an experiment is selected,
  4. ``--set`` overrides, in order.
Snakemake, DVC, the CLI and the tests all go through :func:`load_params`.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

DEFAULT_PARAMS = "params.yaml"
ENV_PARAMS = "XGEO_PARAMS"


from .errors import XGeoError


class ConfigError(XGeoError, ValueError):
    """A configuration file or override is malformed; the message names the file or key."""


def parse_value(text: str) -> Any:
    """Parse an override value the way ``dvc exp run -S`` does: YAML scalars, lists and mappings."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


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


def set_path(params: dict, keys: list[str], value: Any, *, strict: bool = True, source: str = "--set") -> None:
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


def apply_overrides(params: dict, overrides: Iterable[str] | Mapping[str, Any], *, source: str = "--set") -> dict:
    out = copy.deepcopy(params)
    items = overrides.items() if isinstance(overrides, Mapping) else (parse_override(o) for o in overrides)
    for keys, value in items:
        if isinstance(keys, str):
            keys = keys.split(".")
        set_path(out, list(keys), value, source=source)
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
    if experiment is not None:
        experiments = params.get("experiments", {})
        if experiment not in experiments:
            raise ConfigError(
                f"{path}: experiment {experiment!r} is not defined under 'experiments' (known: {sorted(experiments)})"
            )
        params = apply_overrides(params, experiments[experiment] or {}, source=f"experiments.{experiment}")
        params["experiment"] = experiment
    params = apply_overrides(params, overrides)
    return params


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
