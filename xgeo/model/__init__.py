"""The XGeo model: per-sensor patch embeddings, a shared SwinV2 encoder with sparse MoE, per-sensor SimMIM decoders.

``build_model(params)`` builds it from the ``model`` section of params.yaml; see ``xgeo.model.xgeo``.
"""
from .xgeo import MODEL_SIZES, XGeo, build_model, model_config

__all__ = ["MODEL_SIZES", "XGeo", "build_model", "model_config"]
