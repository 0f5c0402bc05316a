"""Settings priority: command line > environment > .env > the config's serve section > defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from pillsnap.config import apply_overrides, load_config
from pillsnap.serve.cli import config_path, split_overrides
from pillsnap.serve.settings import allowed_roots, load_settings

DEMO = Path(__file__).resolve().parents[2] / "examples" / "synthetic" / "config.yaml"


@pytest.fixture
def clean_env(monkeypatch):
    for key in ("MODEL_PATH", "PILLSNAP_ADMIN_TOKEN", "PILLSNAP_CONFIG"):
        monkeypatch.delenv(key, raising=False)
    for key in list(__import__("os").environ):
        if key.startswith("PILLSNAP_SERVE_"):
            monkeypatch.delenv(key)
    return monkeypatch


def test_priority_flags_env_dotenv_config_defaults(clean_env, tmp_path):
    cfg = apply_overrides(load_config(DEMO), {"serve.port": 7000, "serve.max_batch": 4})
    dotenv = tmp_path / ".env"
    dotenv.write_text("PILLSNAP_SERVE_PORT=7100\nMODEL_PATH=/from/dotenv\nOTHER=1\n")
    s = load_settings(cfg, None)
    assert (s.port, s.max_batch, s.model_path, s.host) == (7000, 4, None, "127.0.0.1")
    s = load_settings(cfg, dotenv)
    assert (s.port, s.max_batch, s.model_path) == (7100, 4, Path("/from/dotenv"))
    clean_env.setenv("MODEL_PATH", "/from/env")
    clean_env.setenv("PILLSNAP_SERVE_MAX_BATCH", "16")
    clean_env.setenv("PILLSNAP_SERVE_PORT", "7300")
    s = load_settings(cfg, dotenv, port=7200, host=None)
    assert (s.port, s.max_batch, s.model_path) == (7200, 16, Path("/from/env"))


def test_empty_values_as_in_env_example_mean_unset(clean_env, tmp_path):
    example = Path(__file__).resolve().parents[2] / ".env.example"
    s = load_settings(load_config(DEMO), example)
    assert s.model_path is None and not s.reload_enabled and s.port == 8000


def test_token_only_from_env_and_never_printed(clean_env, tmp_path):
    cfg = load_config(DEMO)
    assert not load_settings(cfg, None).reload_enabled
    (tmp_path / ".env").write_text("PILLSNAP_ADMIN_TOKEN=s3cret\n")
    s = load_settings(cfg, tmp_path / ".env")
    assert s.reload_enabled and "s3cret" not in repr(s) and "s3cret" not in str(s.model_dump())
    with pytest.raises(Exception, match="admin_token"):  # not a config key: config is committed
        apply_overrides(cfg, {"serve.admin_token": "x"})


def test_bad_values_name_the_key(clean_env):
    clean_env.setenv("PILLSNAP_SERVE_PORT", "eighty")
    with pytest.raises(ValidationError, match="port"):
        load_settings(load_config(DEMO), None)


def test_paths_from_the_config_file_are_relative_to_it(clean_env, tmp_path):
    (tmp_path / "c.yaml").write_text(
        "serve:\n  model_path: rel/release\n  allowed_model_roots: [roots/a]\n"
    )
    cfg = load_config(tmp_path / "c.yaml")
    s = load_settings(cfg, None)
    assert s.model_path == tmp_path / "rel" / "release"
    assert allowed_roots(s, cfg) == [(tmp_path / "roots" / "a").resolve()]
    assert allowed_roots(load_settings(load_config(DEMO), None), load_config(DEMO)) == [
        load_config(DEMO).paths.out_dir.resolve()
    ]


def test_cli_serve_overrides_win_and_config_comes_from_dotenv(clean_env, tmp_path):
    serve, rest = split_overrides(["serve.max_batch=2", "postprocess.nms.conf_threshold=0.4"])
    assert serve == {"max_batch": 2} and rest == ["postprocess.nms.conf_threshold=0.4"]
    (tmp_path / ".env").write_text(f"PILLSNAP_CONFIG={DEMO}\n")
    assert config_path(None, tmp_path / ".env") == DEMO
    assert config_path(Path("x.yaml"), tmp_path / ".env") == Path("x.yaml")
