"""Widgets: the dock, the results panel, the Models dialog, diagnostics."""
