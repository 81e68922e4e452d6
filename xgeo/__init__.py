"""xgeo: multi-sensor geospatial foundation-model pretraining."""
from .version import __version__  # noqa: F401


def __getattr__(name):
    # lazy, so that `import xgeo` (and the CLI) stays free of torch until a model is used
    if name == "load":
        from .inference.api import load

        return load
    raise AttributeError(f"module 'xgeo' has no attribute {name!r}")


_INTEGRATIONS = {"timm": "timm_models", "terratorch": "terratorch"}  # package -> xgeo.integrations module


def _register(package: str) -> None:
    import importlib

    importlib.import_module(f".integrations.{_INTEGRATIONS[package]}", __name__)


class _AfterImport:
    """Registers the xgeo encoder with timm / TerraTorch as soon as they are imported (both are heavy, so
    `import xgeo` does not import them)."""

    def find_spec(self, name, path=None, target=None):
        if name not in _INTEGRATIONS:
            return None
        import importlib.machinery

        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            run = spec.loader.exec_module

            def exec_module(module):
                run(module)
                _register(name)

            spec.loader.exec_module = exec_module
        return spec


def _install_import_hook() -> None:
    import sys

    for package in _INTEGRATIONS:
        if package in sys.modules:
            _register(package)
    if not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport())


_install_import_hook()
