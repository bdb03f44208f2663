"""Optional test-time augmentation (--tta true): average the logits of a few fixed views.

No horizontal flip, unlike many image classifiers: the heart sits on the patient's left, training
never flips, and a flipped radiograph is an image the model has not seen (and a different
anatomy for Cardiomegaly and device findings). The views are small shifts and a zoom instead,
within the range of training's augmentation (dataset.py: +-3 % shift, +-5 % zoom), so each view
is one the model was trained on. Logits are averaged (not probabilities) so that the per-class
calibration still sees logits.
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
    """Wraps a model: the mean of its logits over VIEWS of each image (uint8 or float input).

    A study batch (B x V x 1 x H x W views, B x V mask) gets each augmentation applied to all of
    a study's films alike, and the fused logits averaged.
    """

    def __init__(self, model: nn.Module, views: tuple = VIEWS):
        super().__init__()
        self.model, self.views = model, views

    def forward(self, images) -> torch.Tensor:
        study = isinstance(images, (tuple, list))
        films, present = images if study else (images, None)
        x = films.float() / 255.0 if films.dtype == torch.uint8 else films.float()
        flat = x.flatten(0, 1) if study else x
        # every augmentation of every film in one forward pass
        views = torch.cat([shifted_view(flat, *view) for view in self.views])
        if study:
            views = views.view(len(self.views) * len(films), *films.shape[1:])
            logits = self.model((views, present.repeat(len(self.views), 1)))
        else:
            logits = self.model(views)
        return logits.float().reshape(len(self.views), len(films), -1).mean(dim=0)
