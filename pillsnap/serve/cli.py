"""``pillsnap serve``: the HTTP API over a verified release (uvicorn, one process).

Order of a start: read the config and the settings (command line > environment >
``.env`` > the config's ``serve`` section), resolve and verify the model source (a
refused ``MODEL_PATH`` stops here, exit 2, before anything listens), bind the socket
(a busy port fails here, before a model is loaded), then serve: ``/health/live`` at
once, ``/health/ready`` once the model is loaded and warmed up. SIGTERM or Ctrl-C:
stop accepting, let in-flight requests finish (``serve.graceful_timeout_s``), exit 0.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import yaml

from pillsnap.config import CONFIG_ENV, add_config_arguments, load_config
from pillsnap.exceptions import ConfigError, UserInputError

LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pillsnap serve", description=__doc__.split("\n")[0])
    add_config_arguments(p, "serve.max_batch=16")
    p.add_argument("--host", help="bind address (default serve.host, 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default serve.port, 8000; 0 = any free port)")
    p.add_argument(
        "--env-file",
        type=Path,
        default=Path(".env"),
        help="dotenv file holding MODEL_PATH, PILLSNAP_ADMIN_TOKEN, ... (default ./.env)",
    )
    p.add_argument("--no-access-log", action="store_true", help="do not log one line per request")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return int(exc.code or 0)
    from pydantic import ValidationError

    from pillsnap.serve.manager import resolve_source
    from pillsnap.serve.settings import load_settings

    serve_flags, config_overrides = split_overrides(args.overrides)
    env_file = args.env_file if args.env_file.is_file() else None
    cfg = load_config(config_path(args.config, env_file), config_overrides)
    try:
        settings = load_settings(cfg, env_file, host=args.host, port=args.port, **serve_flags)
    except ValidationError as exc:
        raise ConfigError(
            [f"serve setting `{'.'.join(map(str, e['loc']))}`: {e['msg']}" for e in exc.errors()]
        ) from None
    source = resolve_source(settings, cfg)
    sock = bind(settings.host, settings.port)
    return run(cfg, settings, source, sock, access_log=not args.no_access_log)


def split_overrides(overrides: list[str]) -> tuple[dict[str, Any], list[str]]:
    """``serve.KEY=V`` become command-line settings (they win); the rest change the config."""
    serve, rest = {}, []
    for item in overrides:
        key, sep, value = item.partition("=")
        if sep and key.strip().startswith("serve."):
            serve[key.strip()[len("serve.") :]] = yaml.safe_load(value) if value.strip() else None
        else:
            rest.append(item)
    return serve, rest


def config_path(given: Path | None, env_file: Path | None) -> Path | None:
    """``--config``, else ``$PILLSNAP_CONFIG`` from the environment or ``.env``, else ./config.yaml."""
    if given is not None or CONFIG_ENV in os.environ or env_file is None:
        return given
    from dotenv import dotenv_values

    value = dotenv_values(env_file).get(CONFIG_ENV)
    return Path(value) if value else None


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before any model is loaded (a busy port fails fast)."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(2048)  # connections queue from now on, while the app starts
    except OSError as exc:
        raise UserInputError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; pick another --port "
            "or stop the process using it"
        ) from None
    return sock


def run(cfg: Any, settings: Any, source: Any, sock: socket.socket, access_log: bool = True) -> int:
    import logging

    import uvicorn

    from pillsnap.serve.app import create_app

    log = logging.getLogger("pillsnap.serve")
    state = {"code": 0}
    server: uvicorn.Server | None = None

    def fatal(_exc: BaseException) -> None:
        state["code"] = 1
        if server is not None:
            server.should_exit = True

    app = create_app(cfg, settings, source, on_fatal=fatal)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_config=None,  # keep the pillsnap logging set up by the CLI
            access_log=access_log,
            timeout_graceful_shutdown=max(1, round(settings.graceful_timeout_s)),
            limit_concurrency=settings.limit_concurrency,
            server_header=False,
            proxy_headers=False,
            lifespan="on",
        )
    )
    host, port = sock.getsockname()[:2]
    if settings.host not in LOOPBACK:
        log.warning(
            "listening on %s: reachable from the network. Put TLS and authentication in front "
            "(a reverse proxy), and keep PILLSNAP_ADMIN_TOKEN secret.",
            settings.host,
        )
    print(
        f"pillsnap serve: listening on http://{host}:{port} ({source.kind}); "
        "ready when /health/ready says 200",
        flush=True,
    )
    # uvicorn re-raises the signal it caught once it has shut down; a no-op handler turns
    # that into a normal return, so a graceful SIGTERM exits 0 and cleanup runs.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run(sockets=[sock])
    if state["code"]:
        print("pillsnap serve: stopped: the model did not load (see the log)", file=sys.stderr)
    else:
        print("pillsnap serve: stopped", flush=True)
    return state["code"]
