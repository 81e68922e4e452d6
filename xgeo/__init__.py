"""xgeo: multi-sensor geospatial foundation-model pretraining."""
__version__ = "0.1.0"


def __getattr__(name):
    # lazy, so that `import xgeo` (and the CLI) stays free of torch until a model is used
    if name == "load":
        from .inference.api import load

        return load
    raise AttributeError(f"module 'xgeo' has no attribute {name!r}")


def _register_timm_models() -> None:
    from .integrations import timm_models  # noqa: F401  (registers xgeo_swinv2_* with timm)


class _AfterTimmImport:
    """Registers the xgeo models with timm as soon as timm is imported (timm is heavy: `import xgeo` stays light)."""

    def find_spec(self, name, path=None, target=None):
        if name != "timm":
            return None
        import importlib.machinery
        import sys

        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            run = spec.loader.exec_module

            def exec_module(module):
                run(module)
                _register_timm_models()

            spec.loader.exec_module = exec_module
        return spec


def _install_timm_hook() -> None:
    import sys

    if "timm" in sys.modules:
        _register_timm_models()
    elif not any(isinstance(f, _AfterTimmImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterTimmImport())


_install_timm_hook()
