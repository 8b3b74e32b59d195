"""signature.json of an MMS 0.4 archive, parsed once into frozen dataclasses.

    {"inputs":  [{"data_name": "data", "data_shape": [1, 3, 224, 224]}],
     "input_type": "image/jpeg",
     "outputs": [{"data_name": "softmax", "data_shape": [1, 1000]}],
     "output_type": "application/json"}

A 0 in a shape means "any size" on that axis (axis 0 is the batch axis). Image inputs are
NCHW; the frontend resizes every image to that H x W.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mxserve.common.errors import ArchiveError

IMAGE_JPEG = "image/jpeg"
APPLICATION_JSON = "application/json"
INPUT_TYPES = (IMAGE_JPEG, APPLICATION_JSON)
OUTPUT_TYPES = (APPLICATION_JSON, IMAGE_JPEG)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]

    def accepts(self, shape: tuple[int, ...]) -> bool:
        """Whether a request's tensor of `shape` fits: same rank, equal on every fixed axis."""
        return len(shape) == len(self.shape) and all(
            want == 0 or want == got for want, got in zip(self.shape, shape))

    def accepts_rows(self, shape: tuple[int, ...]) -> bool:
        """Whether a tensor of `shape` fits with any number of rows (at least one): the
        signature's shape on every other axis."""
        return (len(shape) == len(self.shape) and shape[0] >= 1
                and TensorSpec(self.name, self.shape[1:]).accepts(shape[1:]))

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of an NCHW image input."""
        return self.shape[2], self.shape[3]

    @property
    def channels(self) -> int:
        return self.shape[1]


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    input_type: str
    output_type: str

    @property
    def is_image(self) -> bool:
        return self.input_type == IMAGE_JPEG

    def input(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """The signature.json form; what 0.4 services read through `self.signature`."""
        return {
            "inputs": [{"data_name": s.name, "data_shape": list(s.shape)} for s in self.inputs],
            "input_type": self.input_type,
            "outputs": [{"data_name": s.name, "data_shape": list(s.shape)} for s in self.outputs],
            "output_type": self.output_type,
        }


def parse_signature(raw: Any, source: str = "signature.json") -> Signature:
    """Validate a decoded signature.json; every refusal names what is wrong."""
    if not isinstance(raw, dict):
        raise ArchiveError(f"{source} must be a JSON object")
    input_type = raw.get("input_type")
    if input_type not in INPUT_TYPES:
        raise ArchiveError(f"{source}: input_type must be one of {list(INPUT_TYPES)}, "
                           f"got {input_type!r}")
    output_type = raw.get("output_type", APPLICATION_JSON)
    if output_type not in OUTPUT_TYPES:
        raise ArchiveError(f"{source}: output_type must be one of {list(OUTPUT_TYPES)}, "
                           f"got {output_type!r}")
    inputs = _parse_specs(raw.get("inputs"), "inputs", source)
    outputs = _parse_specs(raw.get("outputs"), "outputs", source)
    if input_type == IMAGE_JPEG:
        for spec in inputs:
            if len(spec.shape) != 4 or spec.shape[2] <= 0 or spec.shape[3] <= 0:
                raise ArchiveError(f"{source}: image input {spec.name!r} needs an NCHW shape with "
                                   f"fixed height and width, got {list(spec.shape)}")
            if spec.shape[1] not in (1, 3):
                raise ArchiveError(f"{source}: image input {spec.name!r} must have 1 or 3 "
                                   f"channels, got {spec.shape[1]}")
    return Signature(inputs=inputs, outputs=outputs, input_type=input_type,
                     output_type=output_type)


def _parse_specs(raw: Any, key: str, source: str) -> tuple[TensorSpec, ...]:
    if not isinstance(raw, list) or not raw:
        raise ArchiveError(f"{source}: {key!r} must be a non-empty list")
    specs = []
    for index, entry in enumerate(raw):
        where = f"{source}: {key}[{index}]"
        if not isinstance(entry, dict):
            raise ArchiveError(f"{where} must be an object with data_name and data_shape")
        name = entry.get("data_name")
        if not isinstance(name, str) or not name:
            raise ArchiveError(f"{where}.data_name must be a non-empty string")
        shape = entry.get("data_shape")
        if (not isinstance(shape, list) or not shape
                or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                           for d in shape)):
            raise ArchiveError(f"{where}.data_shape must be a non-empty list of integers >= 0 "
                               f"(0 = any), got {shape!r}")
        specs.append(TensorSpec(name=name, shape=tuple(shape)))
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ArchiveError(f"{source}: duplicate data_name in {key}: {duplicates}")
    return tuple(specs)
