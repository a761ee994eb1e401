"""Meshes in, training data out: loading, normalisation, inside test, sampling, cameras,
ray-cast rendering, the prepared dataset on disk and its readers."""
