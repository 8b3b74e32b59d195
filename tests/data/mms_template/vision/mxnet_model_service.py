"""An MXNet Module bound from the archive's checkpoint (its prefix is the manifest's
modelName), with signature.json and synset.txt read from the model directory."""
import json
import os

import mxnet as mx
from model_handler import ModelHandler


class MXNetModelService(ModelHandler):
    def __init__(self):
        super().__init__()
        self.mxnet_ctx = None
        self.mx_model = None
        self.labels = None
        self.signature = None
        self.epoch = 0

    def initialize(self, context):
        super().initialize(context)
        properties = context.system_properties
        model_dir = properties.get("model_dir")
        gpu_id = properties.get("gpu_id")
        with open(os.path.join(model_dir, "signature.json")) as f:
            self.signature = json.load(f)
        synset = os.path.join(model_dir, "synset.txt")
        if os.path.isfile(synset):
            with open(synset) as f:
                self.labels = [line.strip() for line in f]
        self.mxnet_ctx = mx.cpu() if gpu_id is None else mx.gpu(gpu_id)
        prefix = os.path.join(model_dir, context.manifest["model"]["modelName"])
        symbol, arg_params, aux_params = mx.model.load_checkpoint(prefix, self.epoch)
        shapes = []
        for spec in self.signature["inputs"]:
            shape = [self._batch_size] + list(spec["data_shape"])[1:]
            shapes.append((spec["data_name"], tuple(shape)))
        self.mx_model = mx.mod.Module(symbol=symbol, context=self.mxnet_ctx,
                                      data_names=[name for name, _ in shapes],
                                      label_names=None)
        self.mx_model.bind(for_training=False, data_shapes=shapes)
        self.mx_model.set_params(arg_params, aux_params, allow_missing=True, allow_extra=True)

    def inference(self, model_input):
        if self.error is not None:
            return None
        batch = mx.nd.concat(*model_input, dim=0)
        # a smaller batch than the module was bound for: Module.forward reshapes to it
        self.mx_model.forward(mx.io.DataBatch([batch]))
        outputs = self.mx_model.get_outputs()[0]
        return [outputs[i:i + 1] for i in range(len(model_input))]
