"""Files the engine writes: answers by format, GeoPackages, GeoTIFFs, locks."""
