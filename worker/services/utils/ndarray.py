"""NDArray helpers with the names and meaning of MMS 0.4's `mms.utils.mxnet.ndarray`."""
from __future__ import annotations

import numpy as np


def top_probability(data, labels, top: int = 5) -> list[dict]:
    """Top-`top` {"class", "probability"} of the first row of `data`, best first."""
    row = data[0].asnumpy() if hasattr(data, "asnumpy") else np.asarray(data)[0]
    return top_of_row(row, labels, top)


def top_of_row(row: np.ndarray, labels, top: int = 5) -> list[dict]:
    order = np.argsort(-row, kind="stable")[:top]
    return [{"class": labels[i], "probability": float(row[i])} for i in order]
