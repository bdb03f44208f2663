"""Inference: a checkpoint (or an ensemble) ready for new radiographs, files and studies scored
with calibrated probabilities and decisions, Grad-CAM heatmaps (predict.py, app.py, export.py)."""
