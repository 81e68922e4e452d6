"""Using a trained model on imagery: ``load`` (Python), ``embed_scene`` (``xgeo embed``), ``predict_scene``
(``xgeo predict``). See docs/ARCHITECTURE.md, "Inference"."""
from .api import Encoder, Finetuned, load

__all__ = ["Encoder", "Finetuned", "load", "embed_scene", "predict_scene"]


def __getattr__(name):
    if name == "embed_scene":
        from .embed import embed_scene

        return embed_scene
    if name == "predict_scene":
        from .predict import predict_scene

        return predict_scene
    raise AttributeError(name)
