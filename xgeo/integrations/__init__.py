"""The encoder where users already work: timm model names (``timm_models``), a TerraTorch backbone (``terratorch``)."""
