"""The settings of ``pillsnap serve``, read once, from four places.

Priority, first wins: the command line (``--host``, ``--port``, ``--set serve.KEY=V``)
> the environment > ``.env`` (in the working directory, or ``--env-file``) > the
``serve`` section of the config file > the defaults of ``pillsnap.config.ServeConfig``.

Environment names: ``PILLSNAP_SERVE_<KEY>`` for every ``serve`` key
(``PILLSNAP_SERVE_MAX_BATCH=16``), plus the spec's ``MODEL_PATH`` and
``PILLSNAP_ADMIN_TOKEN``. The token comes only from the environment or ``.env``: a
config file is shared and committed, a command line shows in ``ps``.
"""

from __future__ import annotations

from contextvars import ContextVar
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from pillsnap.config import Config, ServeConfig

ENV_PREFIX = "PILLSNAP_SERVE_"
_PATH_FIELDS = ("model_path", "warmup_image")


class _ConfigSection(PydanticBaseSettingsSource):
    """The ``serve`` section of the loaded config file, as the lowest-priority source."""

    def __init__(self, settings_cls: type[BaseSettings], values: dict[str, Any]):
        super().__init__(settings_cls)
        self.values = values

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self.values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return {k: v for k, v in self.values.items() if v is not None}


class ServeSettings(BaseSettings, ServeConfig):
    """Every ``serve`` key plus the two that only the environment may set."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",  # .env also holds PILLSNAP_CONFIG and whatever else the team keeps there
        env_ignore_empty=True,  # `MODEL_PATH=` (as in .env.example) means unset, not "."
        populate_by_name=True,
        validate_assignment=True,
    )

    model_path: Path | None = Field(
        None, validation_alias=AliasChoices("MODEL_PATH", f"{ENV_PREFIX}MODEL_PATH", "model_path")
    )
    admin_token: SecretStr | None = Field(
        None, validation_alias=AliasChoices("PILLSNAP_ADMIN_TOKEN"), repr=False
    )
    """Enables ``POST /reload``; compared with ``secrets.compare_digest``."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        section = _ConfigSection(settings_cls, _SECTION.get() or {})
        return init_settings, env_settings, dotenv_settings, section

    @property
    def reload_enabled(self) -> bool:
        return bool(self.admin_token and self.admin_token.get_secret_value())

    def effective_max_batch(self) -> int:
        return self.max_batch if self.batching else 1


# The config section reaches settings_customise_sources (a classmethod) through this.
_SECTION: ContextVar[dict[str, Any] | None] = ContextVar("serve_section", default=None)


def load_settings(cfg: Config, env_file: str | Path | None = ".env", **flags: Any) -> ServeSettings:
    """Settings for ``cfg`` (its ``serve`` section is the lowest layer); ``flags`` win over all.

    Only flags the user actually gave may be passed (``None`` values are dropped), or
    argparse defaults would silently override the environment. Relative paths from the
    config file are relative to its folder; from the environment, to the working directory.
    """
    values = cfg.serve.model_dump(mode="python")
    base = cfg.source.parent if cfg.source is not None else Path.cwd()
    for key in _PATH_FIELDS:
        if values.get(key) is not None and not Path(values[key]).is_absolute():
            values[key] = base / values[key]
    values["allowed_model_roots"] = [
        p if Path(p).is_absolute() else base / p for p in values["allowed_model_roots"]
    ]
    token = _SECTION.set(values)
    try:
        return ServeSettings(
            _env_file=env_file or None, **{k: v for k, v in flags.items() if v is not None}
        )
    finally:
        _SECTION.reset(token)


def allowed_roots(settings: ServeSettings, cfg: Config) -> list[Path]:
    """The resolved folders ``/reload`` may load from (default: the config's ``paths.out_dir``)."""
    roots = settings.allowed_model_roots or [cfg.paths.out_dir]
    return [Path(r).expanduser().resolve() for r in roots]
