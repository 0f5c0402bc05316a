"""Loading a config: a YAML file, then dotted overrides, validated all at once.

Every validation failure is collected and raised once as ``ConfigError``:
unknown keys name the nearest valid key, wrong types name key, expected and given.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ValidationError

from pillsnap.config.sections import Config, PathsConfig
from pillsnap.exceptions import ConfigError, MissingPathError

if TYPE_CHECKING:
    import argparse

CONFIG_ENV = "PILLSNAP_CONFIG"

_PATH_KEYS = {("paths", k) for k in PathsConfig.model_fields} | {
    ("runtime", "tensorrt", "engine_cache_path"),
    ("runtime", "tensorrt", "timing_cache_path"),
    ("release", "notebooks_dir"),
}


def default_config_path() -> Path:
    env = os.environ.get(CONFIG_ENV)
    return Path(env) if env else Path("config.yaml")


def load_config(
    path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None
) -> Config:
    """Load a YAML config, apply dotted overrides, validate everything at once.

    ``path=None`` uses ``$PILLSNAP_CONFIG`` or ``./config.yaml``; when neither exists
    the built-in defaults are used (production sizes, paths relative to the cwd).
    """
    raw: dict[str, Any] = {}
    source: Path | None = None
    explicit = path is not None or CONFIG_ENV in os.environ
    cfg_path = Path(path) if path is not None else default_config_path()
    if cfg_path.exists():
        source = cfg_path.resolve()
        try:
            raw = yaml.safe_load(cfg_path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{cfg_path}: not valid YAML: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(
                f"{cfg_path}: expected a mapping at the top level, got {type(raw).__name__}"
            )
        _resolve_paths(raw, source.parent)
    elif explicit:
        key = "the --config argument" if path is not None else f"${CONFIG_ENV}"
        raise MissingPathError(
            f"config file not found: {cfg_path} (from {key}). Pass an existing YAML file."
        )
    for dotted, value in _parse_overrides(overrides):
        _set_dotted(raw, dotted, value)
    cfg = validate_config(raw)
    object.__setattr__(cfg, "source", source)
    return cfg


def validate_config(raw: dict[str, Any]) -> Config:
    """Validate a raw mapping; every problem is collected into one ``ConfigError``."""
    problems = _unknown_keys(raw, Config, ())
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as exc:
        problems += [
            _describe_error(err) for err in exc.errors() if err["type"] != "extra_forbidden"
        ]
        raise ConfigError(problems) from None
    if problems:
        raise ConfigError(problems)
    return cfg


def apply_overrides(cfg: Config, overrides: list[str] | dict[str, Any] | None) -> Config:
    """Return a new validated config with dotted overrides applied on top of ``cfg``."""
    raw = cfg.model_dump(mode="python", exclude={"source"})
    for dotted, value in _parse_overrides(overrides):
        _set_dotted(raw, dotted, value)
    new = validate_config(raw)
    object.__setattr__(new, "source", cfg.source)
    return new


def _parse_overrides(overrides: list[str] | dict[str, Any] | None) -> list[tuple[str, Any]]:
    if not overrides:
        return []
    if isinstance(overrides, dict):
        return list(overrides.items())
    parsed = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(
                f"override {item!r} is not of the form key.sub=value (e.g. export.opset=18)"
            )
        key, _, text = item.partition("=")
        value = yaml.safe_load(text) if text.strip() else None
        if _is_path_key(key.strip()) and isinstance(value, str):
            value = str(Path(value).expanduser().resolve())
        parsed.append((key.strip(), value))
    return parsed


def _is_path_key(dotted: str) -> bool:
    return tuple(dotted.split(".")) in _PATH_KEYS


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    node = raw
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {} if child is None else child
            node[part] = child
        node = child
    node[parts[-1]] = value


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    for keys in _PATH_KEYS:
        node: Any = raw
        for k in keys[:-1]:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(keys[-1]), str):
            p = Path(node[keys[-1]]).expanduser()
            node[keys[-1]] = str(p if p.is_absolute() else (base / p).resolve())


def _unknown_keys(raw: Any, model: type[BaseModel], prefix: tuple[str, ...]) -> list[str]:
    if not isinstance(raw, dict):
        return []
    problems = []
    fields = {k: f for k, f in model.model_fields.items() if k != "source"}
    for key, value in raw.items():
        dotted = ".".join(prefix + (str(key),))
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
            valid = ", ".join(sorted(fields))
            hint = (
                f"did you mean `{'.'.join(prefix + (close[0],))}`?"
                if close
                else f"valid keys here: {valid}"
            )
            problems.append(f"unknown key `{dotted}`: {hint}")
            continue
        sub = fields[key].annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            problems += _unknown_keys(value, sub, prefix + (str(key),))
    return problems


def _describe_error(err: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
    given = err.get("input")
    given_txt = f"{given!r} ({type(given).__name__})" if given is not None else "nothing"
    return f"`{loc}`: {err['msg']}; expected {_expected(err)}, got {given_txt}"


def _expected(err: dict[str, Any]) -> str:
    kind = err["type"]
    names = {
        "int_parsing": "an integer",
        "int_type": "an integer",
        "int_from_float": "an integer",
        "float_parsing": "a number",
        "float_type": "a number",
        "bool_parsing": "true or false",
        "bool_type": "true or false",
        "string_type": "a string",
        "list_type": "a list",
        "tuple_type": "a list",
        "literal_error": "one of the listed values",
        "path_type": "a path",
        "dict_type": "a mapping",
        "model_type": "a mapping",
    }
    return names.get(kind, "a valid value")


def add_config_arguments(parser: argparse.ArgumentParser, example: str) -> None:
    """``--config PATH`` and repeatable ``--set KEY=VALUE``, the same in every command."""
    parser.add_argument(
        "--config", type=Path, help="config YAML (default $PILLSNAP_CONFIG or ./config.yaml)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"dotted config override, repeatable (e.g. --set {example})",
    )
