"""The package version, recorded in stores, checkpoints and download manifests."""
__version__ = "0.1.0"
