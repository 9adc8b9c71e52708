"""Installing the plugin's Python packages from inside QGIS."""
