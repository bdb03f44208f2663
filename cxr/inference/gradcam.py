"""Grad-CAM heatmaps: where in a radiograph the model found the evidence for one finding.

Grad-CAM (Selvaraju et al., 2017) weighs each channel of the backbone's last feature map
(`model.backbone`, e.g. DenseNet121's 1024 x H/32 x W/32) by the mean gradient of the finding's
logit and keeps the positive sum: a coarse map (10 x 10 at 320 px) that is scaled to the image.
For an ensemble, the map of each member's backbone for the ensemble's logit, averaged. The
`grad-cam` package (pytorch_grad_cam) computes it; the model takes the same uint8 batch as
for prediction, normalised inside forward, and runs in fp32 (gradients under bf16 autocast
would be coarser for no gain on a few images).

localize.py scores other methods of the package on the same layer (saliency_maps): Grad-CAM++
(second-order weights), HiResCAM (the gradient times the activation, element-wise, without
averaging) and EigenCAM (the first principal component of the activations: the same map for
every class, no gradient).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

OVERLAY_MAX_SIDE = 1024  # px; larger radiographs are shrunk for the overlay PNG
IMAGE_WEIGHT = 0.55  # share of the radiograph in the overlay; the rest is the colour map
# localize.py --saliency: its name -> the pytorch_grad_cam class
SALIENCY_METHODS = {"gradcam": GradCAM, "gradcampp": GradCAMPlusPlus, "hirescam": HiResCAM,
                    "eigencam": EigenCAM}
CLASS_AGNOSTIC = {"eigencam"}  # methods whose map is the same for every class (no gradient)


def grad_cam(model: nn.Module, images: torch.Tensor, class_index: int) -> np.ndarray:
    """n x size x size Grad-CAM maps (each scaled to 0..1) of one class for a uint8 batch on the
    model's device."""
    return saliency_maps(model, images, class_index, "gradcam")


def saliency_maps(model: nn.Module, images: torch.Tensor, class_index: int, method: str
                  ) -> np.ndarray:
    """n x size x size maps (each scaled to 0..1) of one class for a uint8 batch on the model's
    device, by one of SALIENCY_METHODS."""
    # an ensemble (cxr/evaluation/ensemble.py) has every member's backbone: the package averages
    # their maps
    cam = SALIENCY_METHODS[method](model=model,
                                   target_layers=getattr(model, "backbones", None)
                                   or [model.backbone])
    try:
        return cam(input_tensor=images,
                   targets=[ClassifierOutputTarget(class_index)] * len(images))
    finally:
        cam.activations_and_grads.release()  # remove its hooks from the shared model


def on_radiograph(cam: np.ndarray, side: int, height: int, width: int) -> np.ndarray:
    """A map over the model's view -> the same map over the whole H x W radiograph.

    The view is the centre image_size square of the image resized to side x side: the map goes
    back into that square (the thin margin the crop cut off, which the model never saw, gets 0),
    and the square is stretched back to the image's own width and height.
    """
    return cv2.resize(in_square(cam, side), (width, height), interpolation=cv2.INTER_LINEAR)


def in_square(cam: np.ndarray, side: int) -> np.ndarray:
    """A map over the model's centre view placed in the side x side square the view was cut
    from (the margin the crop cut off gets 0): the map over the whole film, squeezed square."""
    size = cam.shape[0]
    square = np.zeros((side, side), np.float32)
    offset = (side - size) // 2
    square[offset:offset + size, offset:offset + size] = cam
    return square


def overlay(image: np.ndarray, cam: np.ndarray, side: int) -> np.ndarray:
    """RGB uint8 picture of the radiograph (8-bit grayscale H x W) with the map in colour
    (jet: red = strongest evidence), at most OVERLAY_MAX_SIDE px on its longer side."""
    scale = min(1.0, OVERLAY_MAX_SIDE / max(image.shape))
    if scale < 1.0:
        image = cv2.resize(image, (round(image.shape[1] * scale), round(image.shape[0] * scale)),
                           interpolation=cv2.INTER_AREA)
    heat = on_radiograph(cam, side, *image.shape)
    rgb = np.repeat(image[:, :, None], 3, axis=2).astype(np.float32) / 255.0
    return show_cam_on_image(rgb, np.clip(heat, 0.0, 1.0), use_rgb=True, image_weight=IMAGE_WEIGHT)


def peak(cam: np.ndarray, side: int, height: int, width: int) -> tuple[int, int]:
    """(x, y) pixel of the radiograph where the map is strongest."""
    heat = on_radiograph(cam, side, height, width)
    y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return int(x), int(y)
