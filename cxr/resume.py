"""Resuming a training run: what must match its checkpoint, and where it picks up."""

from __future__ import annotations

# Fields a resumed run must share with its checkpoint: they shape the data, model or optimisation.
# Any other field (paths, epochs, workers, device, checkpoint cadence...) may change on resume.
FIXED_ON_RESUME = ("frontal_only", "uncertainty_policy", "uncertainty_policy_by_class", "seed",
                   "gem_p", "dropout", "image_size", "crop_margin", "batch_size",
                   "accumulation_steps", "frozen_epochs", "lr_head", "lr_backbone", "weight_decay",
                   "warmup_steps", "lr_schedule", "grad_clip_norm", "max_pos_weight", "augment",
                   "precision", "view_mode", "view_fusion", "max_views")
