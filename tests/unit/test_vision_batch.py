"""The vision service's vectorised batch path: decoded images in, one NCHW tensor out."""
from __future__ import annotations

import numpy as np

from mxserve.common.archive import load_archive
from mxserve.worker.services.loader import load_service


def test_a_batch_reaches_the_model_as_one_c_ordered_float32_nchw_tensor(sample_models,
                                                                       tmp_path):
    archive = load_archive(sample_models["digits"], tmp_path)
    service = load_service(archive, max_batch_size=4)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(3)]

    [tensor], rows = service._preprocess_batch([[image] for image in images])

    assert rows == [1, 1, 1]
    assert tensor.dtype == np.float32 and tensor.shape == (3, 3, 32, 32)
    # C order: the executor copy is then one memcpy, not a second strided pass.
    assert tensor.flags.c_contiguous
    np.testing.assert_array_equal(tensor, np.stack(images).transpose(0, 3, 1, 2))
    batched = service._inference([tensor])[0].asnumpy()
    one_by_one = [service._inference([tensor[i:i + 1]])[0].asnumpy()[0] for i in range(3)]
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-5, atol=1e-6)
