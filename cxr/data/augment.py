"""Training augmentation, and the test-time views (--tta true) drawn from the same ranges.

Training: a random rotation, zoom and crop position, one cv2.warpAffine on the uint8 image.
No horizontal flip, unlike many image classifiers: the heart sits on the patient's left, and
Cardiomegaly and device findings depend on that side. Evaluation and prediction take the centre
view. Test-time augmentation averages the logits of a few fixed views: the centre, a shift each
way by training's largest shift, and training's largest zoom, so each view is one the model was
trained on (and no flip, which it never saw). Logits are averaged (not probabilities) so that the
per-class calibration still sees logits.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# ---- training ------------------------------------------------------------------------------------

MAX_ROTATION = 7.0  # degrees
MAX_SCALE_CHANGE = 0.05  # +-5 % zoom
MAX_SHIFT = 0.03  # +-3 % of image_size, on top of the crop position inside the margin


def random_view(square: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Training augmentation on uint8: random rotation, zoom and crop position in one warp.

    One cv2.warpAffine on 8-bit pixels costs a fraction of a millisecond, far less than the same
    affine on float tensors. No horizontal flip: the heart sits on the patient's left, and
    Cardiomegaly and device findings depend on that side.
    """
    rotation, scale, shift_x, shift_y = rng.uniform(-1.0, 1.0, 4).tolist()
    side = square.shape[0]
    reach = (side - size) / 2 + MAX_SHIFT * size
    cx, cy = side / 2 + shift_x * reach, side / 2 + shift_y * reach
    matrix = cv2.getRotationMatrix2D((cx, cy), rotation * MAX_ROTATION,
                                     1.0 + scale * MAX_SCALE_CHANGE)
    matrix[:, 2] += (size / 2 - cx, size / 2 - cy)  # the chosen centre lands mid-output
    return cv2.warpAffine(square, matrix, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def centre_view(square: np.ndarray, size: int) -> np.ndarray:
    offset = (square.shape[0] - size) // 2
    return np.ascontiguousarray(square[offset:offset + size, offset:offset + size])


# ---- test-time views --------------------------------------------------------------------------------

# (shift x, shift y, zoom): shifts as a fraction of the side, zoom > 1 magnifies; the extremes of
# training's ranges above.
VIEWS = ((0.0, 0.0, 1.0), (MAX_SHIFT, MAX_SHIFT, 1.0), (-MAX_SHIFT, -MAX_SHIFT, 1.0),
         (0.0, 0.0, 1.0 + MAX_SCALE_CHANGE))


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
