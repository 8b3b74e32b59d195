"""MXNetVisionService: images in, top-5 {"class", "probability"} per output out (MMS 0.4).

Preprocessing is 0.4's: RGB, stretch-resize to the signature's H x W with OpenCV bicubic,
HWC -> CHW, no scaling or normalisation (the graph carries it). Each image arrives decoded
and resized (by the frontend, or by this worker before any service code: image_decode), so
the vectorised batch path only stacks and transposes.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from mxserve.common.errors import ModelError
from mxserve.worker.services.base import MXNetBaseService, Request
from mxserve.worker.services.utils import image, ndarray


def images_to_batch(images: Sequence[np.ndarray]) -> np.ndarray:
    """N images H x W x C uint8 -> one N x C x H x W float32 batch in C order (astype's
    default order "K" keeps the NHWC layout, and the executor copy then makes a second,
    strided pass)."""
    return np.stack(images).transpose(0, 3, 1, 2).astype(np.float32, order="C")


class MXNetVisionService(MXNetBaseService):
    def _preprocess(self, data: Request) -> list:
        h, w = self.signature["inputs"][0]["data_shape"][2:]
        return [image.transform_shape(image.resize(image.read(img), w, h)) for img in data]

    def _postprocess(self, data: list) -> Any:
        return [ndarray.top_probability(d, self._labels(), top=5) for d in data]

    def _labels(self) -> list[str]:
        labels = getattr(self, "labels", None)
        if labels is None:
            raise ModelError("the model has no synset.txt (and its service sets no labels)")
        return labels

    def _preprocess_batch(self, requests: Sequence[Request]) -> tuple[list, list[int]]:
        if self._overridden("_preprocess", MXNetVisionService):
            return super()._preprocess_batch(requests)
        stacked = []
        for k, spec in enumerate(self.parsed_signature.inputs):
            images = [np.asarray(r[k]) for r in requests]
            for img in images:
                if img.shape != (*spec.image_size, spec.channels):
                    return super(MXNetBaseService, self)._preprocess_batch(requests)
            stacked.append(images_to_batch(images))
        return stacked, [1] * len(requests)

    def _postprocess_batch(self, outputs: Sequence[Any], rows: Sequence[int]) -> list[Any]:
        if self._overridden("_postprocess", MXNetVisionService) or any(r != 1 for r in rows):
            return super(MXNetBaseService, self)._postprocess_batch(outputs, rows)
        labels = self._labels()
        host = [out.asnumpy() for out in outputs]
        return [[ndarray.top_of_row(h[i], labels) for h in host] for i in range(len(rows))]
