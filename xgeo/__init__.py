"""xgeo: multi-sensor geospatial foundation-model pretraining."""
__version__ = "0.1.0"
