"""A test service for the noop archive whose answer size the request picks: a first number
n >= 1 answers n floats; anything else answers like noop (output = input)."""
import numpy as np
from mms.model_service.mxnet_model_service import MXNetBaseService


class LargeAnswerService(MXNetBaseService):
    def _postprocess(self, data):
        first = float(np.asarray(data[0].asnumpy() if hasattr(data[0], "asnumpy")
                                 else data[0]).ravel()[0])
        if first >= 1:
            return [0.5] * int(first)
        if first == -3:
            return [float("nan")]
        return super()._postprocess(data)
