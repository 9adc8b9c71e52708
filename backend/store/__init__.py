"""Weights, model bundles, downloads and the caches: what the engine keeps on disk."""
