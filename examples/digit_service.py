"""A custom service for the sample digits model, written the MMS 0.4 way."""
from mms.model_service.mxnet_vision_service import MXNetVisionService


class DigitService(MXNetVisionService):
    """Answers the best digit and its probability instead of 0.4's top-5 list."""

    def _postprocess(self, data):
        probabilities = data[0][0].asnumpy()
        best = int(probabilities.argmax())
        return {"digit": self.labels[best], "probability": float(probabilities[best])}
