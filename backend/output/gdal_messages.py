"""GDAL's own messages: kept out of stderr (QGIS shows them as errors) and read into ours instead."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def quiet_gdal() -> Iterator[None]:
    """GDAL's messages stay out of stderr while inside. The handler stack is per thread: open, write and
    close a file in one thread."""
    from osgeo import gdal

    gdal.PushErrorHandler("CPLQuietErrorHandler")
    try:
        yield
    finally:
        gdal.PopErrorHandler()


def gdal_error(default: str = "unknown GDAL error") -> str:
    """GDAL's last message, for ours."""
    from osgeo import gdal

    return gdal.GetLastErrorMsg() or default
