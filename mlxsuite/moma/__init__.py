"""MoMa experiments (Lin et al. 2024): early-fusion text+image models with modality-aware experts.

The model is `mlxsuite.models.moma`; this package holds the recipes around it:

- `spec`:     a run's settings (`MomaRunSpec`), the variants (dense, moe<E>x, moma<T>t<I>i, +mod) at matched FLOPs;
- `data`:     the unified vocabulary, mixed-modal rows, the text tokenizer and image codebook of a run;
- `train`:    losses, evaluation, training (stage 1) and auxiliary-router training (stage 2), loading a run;
- `compare`:  every variant at one FLOPs budget, the speed-up factor η per modality, plots;
- `generate`: caption → image and image → caption through the causal path and the shared decode loop.

A run is a model folder: config.json (model args + an "mlxsuite" block), tokenizer.model, codebook.safetensors,
run/ (spec, checkpoint, metrics), routers/ (router-training run), model.safetensors when training ends.
"""
