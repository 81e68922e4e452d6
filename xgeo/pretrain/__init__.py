"""Cross-sensor pretraining, one job per module: the loop (``train``), step batches and crops (``data``), which
samples a step reads (``sampler``), masks and target choice (``masking``), the loss (``objective``; Table 5's
``distill``), AdamW (``optim``), epochs -> steps and the lr (``schedule``), checkpoint and resume state (``state``),
metrics records (``metrics``), torchrun/DDP (``distributed``) and Figure-4 reconstructions (``figures``)."""
