"""The same batch run on a Ray cluster: Ray Data ``map_batches`` with one engine actor per GPU (or
per CPU worker), photos read from and results written to shared storage.

The driver walks the folders, reads which photos the output GeoPackage already answers (the same
resume rule as a local run), and writes every result through the same writer and schema; the actors
only load the engine and answer photos. Ray is optional: ``pip install 'ray[data]'``.
"""

from __future__ import annotations

import json
from typing import Callable, Iterable

from .batch import RunSummary, finish
from .errors import GeoCLIPError
from .results import result_from_dict, result_to_dict


class _EngineActor:
    """Lives on a Ray worker: loads the engine once, answers batches of photo paths."""

    def __init__(self, engine_options: dict, top_k: int, skip: list[str], skip_geotagged: bool):
        from .engine import Engine

        self.engine = Engine(**engine_options).load()
        self.top_k, self.skip, self.skip_geotagged = top_k, frozenset(skip), skip_geotagged

    def __call__(self, batch: dict) -> dict:
        photos = [str(p) for p in batch["photo"]]
        results = self.engine.predict_iter(photos, self.top_k, skip=self.skip, skip_geotagged=self.skip_geotagged)
        return {"result": [json.dumps(result_to_dict(r)) for r in results]}


def run_photos_on_ray(photos: Iterable[str], writer, engine_options: dict, top_k: int = 5,
                      address: str | None = None, workers: int = 1, batch_size: int = 8, resume: bool = True,
                      skip_geotagged: bool = False, on_result: Callable | None = None) -> RunSummary:
    """``engine_options``: keyword arguments for :class:`Engine` on each worker (heads, clip, device,
    precision). ``address``: a running cluster ("auto", "ray://host:10001") or None for a local one."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise GeoCLIPError("running on Ray needs Ray Data: pip install 'ray[data]'") from None

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        skip = sorted(writer.answered_hashes()) if resume and hasattr(writer, "answered_hashes") else []
        gpu = engine_options.get("device", "auto") not in ("cpu",) and ray.cluster_resources().get("GPU", 0) > 0
        items = [{"photo": str(p)} for p in photos]
        summary = RunSummary()
        if not items:
            return summary
        dataset = ray.data.from_items(items).map_batches(
            _EngineActor, fn_constructor_kwargs={"engine_options": engine_options, "top_k": top_k, "skip": skip,
                                                 "skip_geotagged": skip_geotagged},
            batch_size=batch_size, concurrency=workers, num_gpus=1 if gpu else 0, num_cpus=1,
        )
        for batch in dataset.iter_batches(batch_size=batch_size, batch_format="numpy"):
            for text in batch["result"]:
                result = result_from_dict(json.loads(str(text)))
                writer.write(result)
                summary.add(result)
                if on_result:
                    on_result(result)
        return finish(summary, writer)
    finally:
        if started_here:
            ray.shutdown()
