"""xgeo: multi-sensor geospatial foundation-model pretraining."""
__version__ = "0.1.0"


def __getattr__(name):
    # lazy, so that `import xgeo` (and the CLI) stays free of torch until a model is used
    if name == "load":
        from .inference.api import load

        return load
    raise AttributeError(f"module 'xgeo' has no attribute {name!r}")
