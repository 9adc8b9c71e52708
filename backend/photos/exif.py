"""A photo's own metadata from EXIF: GPS position, altitude, direction, capture time, camera.

EXIF in the wild is often broken (zero denominators, out-of-range degrees, missing reference tags,
wrong types). Each field is read on its own; a field that cannot be trusted is left empty (None) and the
rest are still read. Nothing here raises.
"""

from __future__ import annotations

import math

from PIL import ExifTags, Image

from ..results import PhotoMetadata

GPS = ExifTags.GPS
BASE = ExifTags.Base


def _number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError, ZeroDivisionError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _degrees(dms) -> float | None:
    """(degrees, minutes, seconds) rationals -> decimal degrees; None when any part is unusable."""
    parts = list(dms) if isinstance(dms, (tuple, list)) else [dms]
    if not 1 <= len(parts) <= 3:
        return None
    values = [_number(p) for p in parts]
    if any(v is None or v < 0 for v in values):
        return None
    weights = (1.0, 60.0, 3600.0)
    return sum(v / w for v, w in zip(values, weights))


def _text(value) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    value = value.replace("\x00", "").strip()
    return value or None


def _signed(gps: dict, value_tag: int, ref_tag: int, positive: str, negative: str, limit: float):
    magnitude = _degrees(gps.get(value_tag))
    ref = _text(gps.get(ref_tag))
    if magnitude is None or magnitude > limit or ref is None:
        return None  # without N/S or E/W the sign is a guess: better empty than wrong
    ref = ref.upper()[:1]
    if ref == negative:
        return -magnitude
    return magnitude if ref == positive else None


def _timestamp(exif_ifd: dict, base: dict) -> str | None:
    raw = _text(exif_ifd.get(BASE.DateTimeOriginal)) or _text(base.get(BASE.DateTime))
    if not raw or len(raw) < 19 or raw.startswith("0000"):
        return None
    date, _, time = raw[:19].partition(" ")
    date = date.replace(":", "-")
    if len(date) != 10 or len(time) != 8 or not (date[:4] + date[5:7] + date[8:10]).isdigit():
        return None
    return f"{date}T{time}"


def _altitude_ref(value) -> int:
    return value[0] if isinstance(value, bytes) else int(value or 0)


def _safe(read, default=None):
    try:
        return read()
    except Exception:  # a malformed IFD must not take the photo down with it
        return default


def read_metadata(image: Image.Image) -> PhotoMetadata:
    exif = _safe(image.getexif)
    if exif is None:
        return PhotoMetadata()
    base = _safe(lambda: dict(exif), {})
    gps = _safe(lambda: dict(exif.get_ifd(ExifTags.IFD.GPSInfo)), {})
    exif_ifd = _safe(lambda: dict(exif.get_ifd(ExifTags.IFD.Exif)), {})

    latitude = _safe(lambda: _signed(gps, GPS.GPSLatitude, GPS.GPSLatitudeRef, "N", "S", 90.0))
    longitude = _safe(lambda: _signed(gps, GPS.GPSLongitude, GPS.GPSLongitudeRef, "E", "W", 180.0))
    if latitude is None or longitude is None:
        latitude = longitude = None  # half a position is no position

    altitude = _safe(lambda: _number(gps.get(GPS.GPSAltitude)))
    if altitude is not None and _safe(lambda: _altitude_ref(gps.get(GPS.GPSAltitudeRef))) == 1:
        altitude = -altitude  # reference 1 means below sea level
    direction = _safe(lambda: _number(gps.get(GPS.GPSImgDirection)))
    if direction is not None and not 0 <= direction <= 360:
        direction = None
    orientation = _safe(lambda: int(base.get(BASE.Orientation)))
    return PhotoMetadata(
        latitude=latitude,
        longitude=longitude,
        altitude=altitude,
        direction=direction,
        timestamp=_safe(lambda: _timestamp(exif_ifd, base)),
        camera_make=_safe(lambda: _text(base.get(BASE.Make))),
        camera_model=_safe(lambda: _text(base.get(BASE.Model))),
        orientation=orientation if orientation in range(1, 9) else None,
    )


def camera_label(make: str | None, model: str | None) -> str:
    """The camera as people name it: make and model, without the make twice when the model already
    starts with it ("Canon" + "Canon EOS 40D" is "Canon EOS 40D"; "NIKON CORPORATION" + "NIKON D70" is
    "NIKON D70"); "" when EXIF names neither."""
    make, model = (make or "").strip(), (model or "").strip()
    if not make or not model:
        return make or model
    if model.split()[0].casefold() in make.casefold().split() or (model + " ").casefold().startswith(
        make.casefold() + " "
    ):
        return model
    return f"{make} {model}"
