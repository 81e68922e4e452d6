"""Data layer: synthetic scenes and writers (``scene``, ``synth``), readers, conversion to Zarr, datasets."""
