"""Image classification on the template's layers: each request's image decoded and resized
to the signature's input, the top 5 classes answered."""
import logging

from mxnet_model_service import MXNetModelService
from mxnet_utils import image, ndarray


class MXNetVisionService(MXNetModelService):
    def preprocess(self, batch):
        images = []
        name = self.signature["inputs"][0]["data_name"]
        height, width = self.signature["inputs"][0]["data_shape"][2:]
        for request in batch:
            picture = request.get(name)
            if picture is None:
                picture = request.get("body")
            if picture is None:
                picture = request.get("data")
            if picture is None or len(picture) == 0:
                self.error = "Empty image input"
                return None
            try:
                decoded = image.read(picture)
            except Exception as e:
                logging.warning(e, exc_info=True)
                self.error = "Corrupted image input"
                return None
            images.append(image.transform_shape(image.resize(decoded, width, height)))
        return images

    def postprocess(self, data):
        if self.error is not None:
            return [self.error] * self._batch_size
        return [ndarray.top_probability(d, self.labels, top=5) for d in data]


_service = MXNetVisionService()


def handle(data, context):
    if not _service.initialized:
        _service.initialize(context)
    if data is None:
        return None
    return _service.handle(data, context)
