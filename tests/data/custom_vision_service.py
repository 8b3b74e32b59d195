"""A custom service written exactly as for MMS 0.4: same imports, same hooks.

It refuses blank images (to show one failing request fails alone) and answers the top
class with a confidence flag instead of 0.4's top-5 list.
"""
from mms.model_service.mxnet_vision_service import MXNetVisionService
from mms.utils.mxnet import image


class DigitService(MXNetVisionService):
    def _preprocess(self, data):
        img_list = []
        for img in data:
            img_arr = image.read(img)
            if img_arr.max().asscalar() == 0:
                raise ValueError("blank image: nothing to classify")
            img_arr = image.resize(img_arr, 32, 32)
            img_list.append(image.transform_shape(img_arr))
        return img_list

    def _postprocess(self, data):
        probabilities = data[0][0].asnumpy()
        best = int(probabilities.argmax())
        return {"digit": self.labels[best], "confident": bool(probabilities[best] > 0.5)}
