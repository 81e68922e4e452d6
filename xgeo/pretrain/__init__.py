"""Cross-sensor pretraining: masks and target choice (``masking``), heterogeneous batches (``sampler``),
the training loop with exact resume (``train``), torchrun/DDP (``distributed``), Figure-4 reconstructions
(``figures``) and the distillation baselines of Table 5 (``distill``)."""
