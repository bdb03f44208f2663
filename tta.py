"""Optional test-time augmentation (--tta true): average the logits of a few fixed views.

No horizontal flip, unlike many image classifiers: the heart sits on the patient's left, training
never flips, and a flipped radiograph is an image the model has not seen (and a different
anatomy for Cardiomegaly and device findings). The views are small shifts and a zoom instead,
within the range of training's augmentation (dataset.py: +-3 % shift, +-5 % zoom), so each view
is one the model was trained on. Logits are averaged (not probabilities) so that temperature
scaling still sees logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# (shift x, shift y, zoom): shifts as a fraction of the side, zoom > 1 magnifies.
VIEWS = ((0.0, 0.0, 1.0), (0.03, 0.03, 1.0), (-0.03, -0.03, 1.0), (0.0, 0.0, 1.05))


def shifted_view(images: torch.Tensor, shift_x: float, shift_y: float, zoom: float
                 ) -> torch.Tensor:
    """A float [0, 1] batch moved by (shift_x, shift_y) of its side and zoomed; the border that
    comes in is black (0), as in training's warp."""
    if (shift_x, shift_y, zoom) == (0.0, 0.0, 1.0):
        return images
    theta = torch.tensor([[1.0 / zoom, 0.0, -2.0 * shift_x], [0.0, 1.0 / zoom, -2.0 * shift_y]],
                         dtype=images.dtype, device=images.device)
    grid = F.affine_grid(theta.expand(len(images), 2, 3), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class TTAModel(nn.Module):
    """Wraps a model: the mean of its logits over VIEWS of each image (uint8 or float input)."""

    def __init__(self, model: nn.Module, views: tuple = VIEWS):
        super().__init__()
        self.model, self.views = model, views

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        views = torch.cat([shifted_view(x, *view) for view in self.views])  # one forward pass
        logits = self.model(views).float().reshape(len(self.views), len(images), -1)
        return logits.mean(dim=0)
