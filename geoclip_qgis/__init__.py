"""GeoCLIP for QGIS: geolocate photos with GeoCLIP on your own machine and map the answers.

This package is the QGIS plugin; the engine it calls is ``geoclip_qgis.backend`` (no Qt, no QGIS).
Importing this package does not import QGIS, so the engine and its command line work without it.
"""


def classFactory(iface):  # noqa: N802 - the name QGIS looks for
    from .plugin import GeoCLIPPlugin

    return GeoCLIPPlugin(iface)
