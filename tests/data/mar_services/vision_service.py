"""An image classifier in the shape of MMS 1.x's model_service_template vision service: a
module-level `handle(data, context)` over a lazily initialised service object that binds an
MXNet Module from the files the manifest's modelName prefixes, reads signature.json and
synset.txt from `model_dir`, decodes each request's image with MMS's mxnet image utils and
answers the top-5 classes. It imports only what an MMS 1.x service could."""
import json
import os

import mxnet as mx
from mms.utils.mxnet import image, ndarray


class MXNetVisionService:
    def __init__(self):
        self.initialized = False
        self.error = None

    def initialize(self, context):
        properties = context.system_properties
        model_dir = properties.get("model_dir")
        gpu_id = properties.get("gpu_id")
        self._batch_size = properties.get("batch_size")
        with open(os.path.join(model_dir, "signature.json")) as f:
            self.signature = json.load(f)
        with open(os.path.join(model_dir, "synset.txt")) as f:
            self.labels = [line.strip() for line in f.read().splitlines()]
        prefix = os.path.join(model_dir, context.manifest["model"]["modelName"])
        data_names, data_shapes = [], []
        for spec in self.signature["inputs"]:
            shape = list(spec["data_shape"])
            shape[0] = 1
            shape = [d or 1 for d in shape]
            data_names.append(spec["data_name"])
            data_shapes.append((spec["data_name"], tuple(shape)))
        ctx = mx.cpu() if gpu_id is None else mx.gpu(gpu_id)
        sym, arg_params, aux_params = mx.model.load_checkpoint(prefix, 0)
        self.module = mx.mod.Module(symbol=sym, context=ctx, data_names=data_names,
                                    label_names=None)
        self.module.bind(for_training=False, data_shapes=data_shapes)
        self.module.set_params(arg_params, aux_params, allow_missing=True, allow_extra=True)
        self.initialized = True

    def preprocess(self, batch):
        images = []
        [h, w] = self.signature["inputs"][0]["data_shape"][2:]
        for request in batch:
            img = request.get("data")
            if img is None:
                img = request.get("body")
            img_arr = image.read(img)
            img_arr = image.resize(img_arr, w, h)
            images.append(image.transform_shape(img_arr))
        return images

    def inference(self, model_input):
        outputs = []
        for img in model_input:  # the Module is bound for one image, as the template's is
            self.module.forward(mx.io.DataBatch([img]))
            outputs.append(self.module.get_outputs()[0])
        return outputs

    def postprocess(self, inference_output):
        return [ndarray.top_probability(d, self.labels, top=5) for d in inference_output]

    def handle(self, data, context):
        return self.postprocess(self.inference(self.preprocess(data)))


_service = MXNetVisionService()


def handle(data, context):
    if not _service.initialized:
        _service.initialize(context)
    if data is None:
        return None
    return _service.handle(data, context)
