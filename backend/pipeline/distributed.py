"""Answers from a Ray cluster: Ray Data ``map_batches`` with one engine actor per GPU (or per CPU
worker), photos read from shared storage.

The run pipeline (:mod:`.run`) walks the folders, decides what to skip (the same resume rule as a
local run) and writes every result through the same writer and schema; the actors only load the
engine and answer photos. Ray is optional: ``pip install 'ray[data]'``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

from ..errors import GeoCLIPError
from ..results import PhotoResult, result_from_dict, result_to_dict


class _EngineActor:
    """Lives on a Ray worker: loads the engine once, answers batches of photo paths."""

    def __init__(self, engine_options: dict, top_k: int, area, skip: list[str], skip_geotagged: bool, places, hint):
        from ..model.factory import build_engine

        self.engine = build_engine(**engine_options).load()
        self.top_k, self.area, self.skip, self.skip_geotagged = top_k, area, frozenset(skip), skip_geotagged
        self.places, self.hint = places, hint

    def __call__(self, batch: dict) -> dict:
        photos = [str(p) for p in batch["photo"]]
        results = self.engine.predict_iter(
            photos,
            self.top_k,
            self.area,
            skip=self.skip,
            skip_geotagged=self.skip_geotagged,
            places=self.places,
            hint=self.hint,
        )
        return {"result": [json.dumps(result_to_dict(r)) for r in results]}


class RayAnswers:
    """Iterates over PhotoResults answered by engine actors, in input order within each batch.

    ``engine_options``: keyword arguments for :func:`..model.factory.build_engine` on each worker.
    ``address``: a running cluster ("auto", "ray://host:10001") or None for a local one."""

    def __init__(
        self,
        photos: Iterable[str],
        engine_options: dict,
        top_k: int,
        area=None,
        address: str | None = None,
        workers: int = 1,
        batch_size: int = 8,
        skip: Iterable[str] = (),
        skip_geotagged: bool = False,
        places=None,
        hint=None,
    ):
        try:
            import ray
            import ray.data  # noqa: F401
        except ImportError:
            raise GeoCLIPError("running on Ray needs Ray Data: pip install 'ray[data]'") from None
        self.photos, self.engine_options, self.top_k, self.area = photos, engine_options, top_k, area
        self.address, self.workers, self.batch_size = address, workers, batch_size
        self.skip, self.skip_geotagged = sorted(skip), skip_geotagged
        self.places, self.hint = places, hint  # PlaceOptions and Hint: plain frozen dataclasses, sent as they are

    def __iter__(self) -> Iterator[PhotoResult]:
        import ray
        import ray.data

        started_here = not ray.is_initialized()
        if started_here:
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
        try:
            items = [{"photo": str(p)} for p in self.photos]
            if not items:
                return
            gpu = self.engine_options.get("device", "auto") != "cpu" and ray.cluster_resources().get("GPU", 0) > 0
            dataset = ray.data.from_items(items).map_batches(
                _EngineActor,
                fn_constructor_kwargs={
                    "engine_options": self.engine_options,
                    "top_k": self.top_k,
                    "area": self.area,
                    "skip": self.skip,
                    "skip_geotagged": self.skip_geotagged,
                    "places": self.places,
                    "hint": self.hint,
                },
                batch_size=self.batch_size,
                concurrency=self.workers,
                num_gpus=1 if gpu else 0,
                num_cpus=1,
            )
            for batch in dataset.iter_batches(batch_size=self.batch_size, batch_format="numpy"):
                for text in batch["result"]:
                    yield result_from_dict(json.loads(str(text)))
        finally:
            if started_here:
                ray.shutdown()
