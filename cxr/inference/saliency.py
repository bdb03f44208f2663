"""Saliency maps of a checkpoint for a list of films (localize.py), batch by batch.

Each film is read as prediction reads it (the centre view of its square, predictor.RadiographFiles)
and each label's map (gradcam.saliency_maps) is placed back in the square the view was cut from
(gradcam.in_square): a map over the whole film, squeezed square, which localize.py stretches to
the film's own size. The probabilities are the calibrated ones predict.py gives (a NaN/inf logit
is an error naming the checkpoint, as there).
"""

from __future__ import annotations

from typing import Iterator, NamedTuple, Sequence

import numpy as np
from tqdm import tqdm

from cxr.inference.gradcam import CLASS_AGNOSTIC, in_square, saliency_maps
from cxr.inference.predictor import Predictor, RadiographFiles, batch_logits, \
    finite_probabilities, make_loader
from cxr.training.runtime import to_device


class FilmMaps(NamedTuple):
    position: int  # in the sources
    maps: dict[str, np.ndarray]  # label -> side x side map (0..1) over the film, squeezed square
    probabilities: dict[str, float]  # label -> the model's calibrated probability


def film_maps(predictor: Predictor, sources: Sequence[str], labels: Sequence[str], method: str,
              batch_size: int = 16, num_workers: int = 0
              ) -> Iterator[FilmMaps | tuple[int, str]]:
    """Each readable film's maps of `labels`, in input order; (position, reason) for a film that
    cannot be read."""
    data = RadiographFiles(sources, predictor.image_size, predictor.side)
    indices = [predictor.labels.index(label) for label in labels]
    bar = tqdm(total=len(data), desc=f"saliency ({method})", unit="img")
    for batch in make_loader(data, batch_size, num_workers, predictor.device):
        yield from batch.errors
        if batch.indices:
            probabilities = finite_probabilities([batch_logits(predictor, batch.images)],
                                                 predictor)
            images = to_device(batch.images, predictor.device, predictor.channels_last)
            if method in CLASS_AGNOSTIC and indices:  # the same map for every class: once
                same = saliency_maps(predictor.model, images, indices[0], method)
                maps = {label: same for label in labels}
            else:
                maps = {label: saliency_maps(predictor.model, images, index, method)
                        for label, index in zip(labels, indices)}
            for row, position in enumerate(batch.indices):
                yield FilmMaps(position,
                               {label: in_square(maps[label][row], predictor.side)
                                for label in labels},
                               {label: float(probabilities[row, index])
                                for label, index in zip(labels, indices)})
        bar.update(len(batch.indices) + len(batch.errors))
    bar.close()
