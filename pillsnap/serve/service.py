"""The request path: decode -> detector batch -> crops -> classifier batch. Knows nothing of HTTP.

Each request pins the served model once, at its start, and uses that object to the
end, so a reload never changes a request half-way and every answer names the version
that produced it. Decoding and cropping run on a small thread pool; both models run
on one model thread (one caller per session, and the CPU is not oversubscribed),
fed by two ``DynamicBatcher`` s: photos of concurrent requests go through the
detector together, then all their crops through the classifier together, with the
pipeline's own halves (``detect_images``, ``Pipeline.prepare_crops`` / ``classify_crops``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pillsnap.pipeline import PillPrediction, PreparedCrops, detect_images
from pillsnap.serve.batching import DynamicBatcher
from pillsnap.serve.images import Photo, decode_photo

if TYPE_CHECKING:
    from PIL import Image

    from pillsnap.serve.manager import ModelManager
    from pillsnap.serve.metrics import Metrics
    from pillsnap.serve.model import ServedModel
    from pillsnap.serve.settings import ServeSettings

CLASSIFIER_CHUNK = 32  # crops per classifier call at most (memory stays bounded)


class NotReady(Exception):
    """No model is loaded yet (or the first load failed)."""


@dataclass(frozen=True)
class Prediction:
    model: ServedModel
    photo: Photo
    pills: list[PillPrediction]
    timing_ms: dict[str, float]
    name: str = "upload"


def _detect(model: ServedModel, images: list[Image.Image]) -> list[np.ndarray]:
    pipe = model.pipeline
    return detect_images(pipe.detector, images, pipe.cfg, batch_size=len(images))


def _classify(model: ServedModel, prepared: list[PreparedCrops]) -> list[list[PillPrediction]]:
    """The crops of several requests in one classifier call, split back per request."""
    merged = PreparedCrops(
        [d for p in prepared for d in p.detections],
        np.concatenate([p.tensors for p in prepared]),
    )
    per_image = model.pipeline.classify_crops(merged, batch_size=CLASSIFIER_CHUNK)
    return per_image  # one image per request: the lists line up


class PredictService:
    """Owns the thread pools and batchers; created in the app's lifespan."""

    def __init__(self, manager: ModelManager, settings: ServeSettings, metrics: Metrics):
        self.manager, self.settings, self.metrics = manager, settings, metrics
        self.decode_pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="model")
        self._arriving = 0  # requests reading / decoding their photo: the detector's upstream
        self._detecting = 0  # requests between the detector and the classifier
        batch = settings.effective_max_batch()
        common: dict[str, Any] = {
            "max_batch": batch,
            "max_wait_ms": settings.max_wait_ms,
            "max_queue": settings.max_queue,
            "on_batch": metrics.observe_batch,
            "slot": asyncio.Lock(),  # one model thread: one batch at a time, formed when it is free
        }
        self.detector = DynamicBatcher(
            "detector", _detect, self.model_thread, upstream=lambda: self._arriving, **common
        )
        self.classifier = DynamicBatcher(
            "classifier", _classify, self.model_thread, upstream=lambda: self._detecting, **common
        )

    def start(self) -> None:
        self.detector.start()
        self.classifier.start()

    async def close(self) -> None:
        await self.detector.close()
        await self.classifier.close()
        self.decode_pool.shutdown(wait=True, cancel_futures=True)
        self.model_thread.shutdown(wait=True, cancel_futures=True)

    def pin(self) -> ServedModel:
        model = self.manager.current
        if model is None:
            raise NotReady(self.manager.startup_error or "the model is still loading")
        return model

    async def predict(
        self, read: Callable[[], Awaitable[bytes]], name: str = "upload"
    ) -> Prediction:
        """One photo through both models; ``read`` fetches its bytes (so arrivals are counted)."""

        async def read_one() -> list[tuple[str, bytes]]:
            return [(name, await read())]

        return (await self.predict_files(read_one))[0]

    async def predict_files(
        self, read: Callable[[], Awaitable[list[tuple[str, bytes]]]]
    ) -> list[Prediction]:
        """Several photos of one request (``(name, bytes)`` each), batched with all in flight.

        The model is pinned before the body is read; the first bad photo's error is raised.
        """
        model = self.pin()
        self._arriving += 1
        try:
            files = await read()
        finally:
            self._arriving -= 1
            self.detector.poke()
        self._arriving += len(files)
        results = await asyncio.gather(
            *(self._one(model, n, d) for n, d in files), return_exceptions=True
        )
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return list(results)  # type: ignore[arg-type]

    async def _one(self, model: ServedModel, name: str, data: bytes) -> Prediction:
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        try:
            photo = await loop.run_in_executor(
                self.decode_pool, decode_photo, data, self.settings.max_image_pixels, name
            )
        finally:
            self._arriving -= 1
            self.detector.poke()
        t1 = time.perf_counter()
        self._detecting += 1
        try:
            detections = await self._submit(self.detector, model, photo.image)
            t2 = time.perf_counter()
            prepared = await loop.run_in_executor(
                self.decode_pool, model.pipeline.prepare_crops, [photo.image], [detections]
            )
        finally:
            self._detecting -= 1
            self.classifier.poke()
        t3 = time.perf_counter()
        pills = await self._submit(self.classifier, model, prepared)
        t4 = time.perf_counter()
        ms = {"decode": t1 - t0, "detect": t2 - t1, "crops": t3 - t2, "classify": t4 - t3}
        return Prediction(model, photo, pills, {k: round(v * 1000, 2) for k, v in ms.items()}, name)

    async def _submit(self, batcher: DynamicBatcher, model: ServedModel, x: Any) -> Any:
        self.metrics.queue_depth.labels(batcher.name).set(batcher.qsize())
        return await asyncio.wait_for(batcher.submit(model, x), self.settings.request_timeout_s)
