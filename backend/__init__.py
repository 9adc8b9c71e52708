"""GeoCLIP engine: photo and text geolocation with GeoCLIP, no Qt, no QGIS.

    from geoclip_qgis.backend import build_engine
    results = build_engine().predict(["photo.jpg"], top_k=5)

A whole run (folders, outputs, rasters, fusion, resume) is :func:`.pipeline.run.execute`, the one pipeline
behind the command line, the plugin's dock and its Processing algorithms.
"""

import os

# Read by huggingface_hub when it is imported: the engine never reaches the network unless the user
# asks for a download (which lifts this for that one call).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from .version import __version__

__all__ = ["Engine", "build_engine", "PhotoResult", "Candidate", "GeoCLIPError", "__version__"]


def __getattr__(name):  # torch loads only when the engine is actually used
    if name == "Engine":
        from .model.engine import Engine

        return Engine
    if name == "build_engine":
        from .model.factory import build_engine

        return build_engine
    if name in ("PhotoResult", "Candidate"):
        from . import results

        return getattr(results, name)
    if name == "GeoCLIPError":
        from .errors import GeoCLIPError

        return GeoCLIPError
    raise AttributeError(name)
