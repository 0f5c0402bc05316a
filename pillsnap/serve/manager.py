"""Which model serves, and switching it without dropping a request. Knows nothing of HTTP.

Start-up (spec E-5, issue 13): ``MODEL_PATH`` (a release folder or a file inside one;
it must exist, be readable and verify) -> the newest *verified* release in
``paths.out_dir`` (``find_newest_release``, the rule of ``pillsnap release latest``)
-> the config's Torch checkpoints, served degraded. With ``serve.strict`` (default)
a bad ``MODEL_PATH`` stops the start; without it the refusal is logged and the next
source is tried.

Reload: the path is resolved first (``..`` and symlinks) and must lie inside the
allowed roots -- nothing is opened before that -- then the release is verified,
loaded and warmed up off the event loop, and only then is the one reference swapped.
Requests keep the model they started with; a failed reload leaves the old model
serving; a second reload while one runs is refused at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pillsnap.serve.model import (
    ModelRejected,
    ServedModel,
    Source,
    load_release,
    load_torch_fallback,
    verified_manifest,
)

if TYPE_CHECKING:
    from pillsnap.config import Config
    from pillsnap.serve.settings import ServeSettings

log = logging.getLogger(__name__)
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")  # http://, file:, s3:, ... (a Windows drive too)
MAX_PATH_CHARS = 4096


class ReloadInProgress(Exception):
    """Another reload is loading a model; try again when it is done."""


@dataclass(frozen=True)
class ModelSource:
    """Where the start-up model comes from (resolved and verified, not loaded yet)."""

    kind: Source
    release_dir: Path | None
    refused: tuple[str, ...] = ()


def release_of(path: Path) -> Path:
    """A release folder, or the folder of a file inside one (resolved, symlinks followed)."""
    real = Path(os.path.realpath(path))
    if not real.exists():
        raise ModelRejected("path", f"{path} does not exist")
    folder = real if real.is_dir() else real.parent
    if not os.access(folder, os.R_OK | os.X_OK):
        raise ModelRejected("path", f"{folder} is not readable by this process")
    return folder


def resolve_source(settings: ServeSettings, cfg: Config) -> ModelSource:
    """MODEL_PATH -> newest verified release -> Torch checkpoints; ``ModelRejected`` when none."""
    from pillsnap.release.manifest import find_newest_release

    refused: list[str] = []
    if settings.model_path is not None:
        try:
            folder = release_of(settings.model_path)
            verified_manifest(folder)
            log.info(
                "model source: MODEL_PATH %s (release %s, verified)", settings.model_path, folder
            )
            return ModelSource("MODEL_PATH", folder)
        except ModelRejected as exc:
            reason = f"MODEL_PATH={settings.model_path} refused: {exc}"
            if settings.strict:
                raise ModelRejected(
                    exc.step,
                    f"{reason}. Fix MODEL_PATH (a verified release folder or a file in one), or "
                    "set serve.strict=false to fall back to the newest verified release",
                ) from exc
            log.warning("%s; serve.strict=false: trying the newest verified release", reason)
            refused.append(reason)
    newest = find_newest_release(cfg.paths.out_dir)
    if newest is not None:
        log.info("model source: newest verified release %s", newest)
        return ModelSource("newest_release", newest.resolve(), tuple(refused))
    missing = [
        str(p)
        for t in ("detection", "classification")
        if not (p := cfg.checkpoint_path(t, False)).is_file()  # type: ignore[arg-type]
    ]
    if missing:
        raise ModelRejected(
            "path",
            "nothing to serve: "
            + ("; ".join(refused) + "; " if refused else "no MODEL_PATH; ")
            + f"no verified release in {cfg.paths.out_dir}; Torch checkpoints missing: "
            + ", ".join(missing)
            + ". Run `pillsnap release --config CONFIG` or set MODEL_PATH.",
        )
    log.warning("model source: no verified release in %s, Torch checkpoints", cfg.paths.out_dir)
    return ModelSource("torch_fallback", None, tuple(refused))


def check_reload_path(raw: object, roots: list[Path]) -> Path:
    """The release folder a ``/reload`` body names, checked before anything is opened.

    Strings only, no URL; relative paths are relative to the first root; ``..`` and
    symlinks are resolved (``realpath`` reads links, opens no file) and the result must
    lie inside a root (``forbidden`` otherwise, whether or not it exists).
    """
    if not isinstance(raw, str) or not raw.strip():
        raise ModelRejected("path", "model_path must be a non-empty string (a release folder)")
    if len(raw) > MAX_PATH_CHARS or "\x00" in raw:
        raise ModelRejected("path", "model_path is not a usable path (too long or a NUL byte)")
    if _URL.match(raw):
        raise ModelRejected(
            "path", "model_path must be a local release folder, not a URL; copy the release first"
        )
    given = Path(raw)
    joined = given if given.is_absolute() else roots[0] / given
    real = Path(os.path.realpath(joined))
    if not any(real == root or real.is_relative_to(root) for root in roots):
        raise ModelRejected(
            "forbidden",
            f"model_path {raw!r} resolves to {real}, outside serve.allowed_model_roots "
            f"({', '.join(map(str, roots))})",
        )
    if not real.exists():
        raise ModelRejected("path", f"model_path {raw!r} does not exist ({real})")
    folder = real if real.is_dir() else real.parent
    if not any(folder == root or folder.is_relative_to(root) for root in roots):
        raise ModelRejected("forbidden", f"{folder} is outside serve.allowed_model_roots")
    return folder


class ModelManager:
    """Holds the served model; swaps it atomically on a successful reload."""

    def __init__(
        self,
        cfg: Config,
        settings: ServeSettings,
        roots: list[Path],
        on_change: Callable[[ServedModel], None] | None = None,
        on_reload: Callable[[str], None] | None = None,
    ):
        self.cfg, self.settings, self.roots = cfg, settings, roots
        self._current: ServedModel | None = None
        self._lock = asyncio.Lock()
        self._on_change = on_change or (lambda _model: None)
        self._on_reload = on_reload or (lambda _result: None)
        self.startup_error: str | None = None

    @property
    def current(self) -> ServedModel | None:
        """Read once per request and kept: a plain attribute read, atomic on the event loop."""
        return self._current

    @property
    def reloading(self) -> bool:
        return self._lock.locked()

    def load(self, source: ModelSource) -> ServedModel:
        """Build the model of a source (blocking: call it off the event loop)."""
        batch = self.settings.effective_max_batch()
        if source.release_dir is None:
            return load_torch_fallback(self.cfg, self.settings.warmup_image, batch)
        return load_release(
            source.release_dir,
            self.cfg,
            source.kind,
            self.settings.precision,
            self.settings.warmup_image,
            batch,
        )

    def publish(self, model: ServedModel) -> None:
        self._current = model  # the one atomic swap
        self._on_change(model)

    async def start(self, source: ModelSource) -> ServedModel:
        model = await asyncio.to_thread(self.load, source)
        self.publish(model)
        log.info(
            "serving %s (%s, %s, %.1f s to load and warm up)",
            model.version,
            model.source,
            "degraded" if model.degraded else "verified",
            model.load_seconds,
        )
        return model

    async def reload(self, raw_path: object, who: str = "-") -> tuple[ServedModel, str | None]:
        """Switch to the release ``raw_path`` names; returns ``(new model, old version)``.

        Raises ``ModelRejected`` (the old model keeps serving) or ``ReloadInProgress``.
        """
        started = time.perf_counter()
        try:
            folder = check_reload_path(raw_path, self.roots)
        except ModelRejected as exc:
            log.warning("reload by %s of %r refused (%s): %s", who, raw_path, exc.step, exc)
            self._on_reload("refused")
            raise
        if self._lock.locked():  # check + acquire with no await between: race-free on one loop
            log.warning("reload by %s of %s refused: another reload is running", who, folder)
            self._on_reload("conflict")
            raise ReloadInProgress("another reload is loading a model; retry when it is done")
        async with self._lock:
            old = self._current
            log.info(
                "reload by %s: loading %s (serving %s meanwhile)", who, folder, old and old.version
            )
            try:
                new = await asyncio.to_thread(self.load, ModelSource("reload", folder))
            except ModelRejected as exc:
                log.warning(
                    "reload by %s of %s FAILED at %s: %s; still serving %s",
                    who,
                    folder,
                    exc.step,
                    exc,
                    old and old.version,
                )
                self._on_reload("failed")
                raise
            except Exception as exc:  # our bug or the machine: still never swap
                log.exception("reload by %s of %s failed unexpectedly", who, folder)
                self._on_reload("failed")
                raise ModelRejected("load", f"{folder}: loading failed: {exc}") from exc
            self.publish(new)
            self._on_reload("ok")
            log.info(
                "reload by %s: %s -> %s (%.1f s); in-flight requests finish on %s",
                who,
                old and old.version,
                new.version,
                time.perf_counter() - started,
                old and old.version,
            )
            return new, old.version if old else None
