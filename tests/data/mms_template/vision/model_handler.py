"""The base of a template-shaped service: initialize, then preprocess, inference and
postprocess per batch, timing each into context.metrics."""
import logging
import time


class ModelHandler:
    def __init__(self):
        self.error = None
        self._context = None
        self._batch_size = 0
        self.initialized = False

    def initialize(self, context):
        self._context = context
        self._batch_size = context.system_properties["batch_size"]
        self.initialized = True

    def preprocess(self, batch):
        return batch

    def inference(self, model_input):
        return model_input

    def postprocess(self, inference_output):
        return ["OK"] * len(inference_output)

    def handle(self, data, context):
        self.error = None
        try:
            started = time.time()
            model_input = self.preprocess(data)
            preprocessed = time.time()
            model_output = self.inference(model_input)
            inferred = time.time()
            answers = self.postprocess(model_output)
            finished = time.time()
            metrics = context.metrics
            metrics.add_time("PreprocessTime", round((preprocessed - started) * 1000, 2))
            metrics.add_time("InferenceTime", round((inferred - preprocessed) * 1000, 2))
            metrics.add_time("PostprocessTime", round((finished - inferred) * 1000, 2))
            return answers
        except Exception as e:
            logging.error(e, exc_info=True)
            context.request_processor.report_status(500, "Unknown inference error")
            return [str(e)] * len(data)
