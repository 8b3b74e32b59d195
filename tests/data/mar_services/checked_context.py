"""A class-style MMS 1.x handler that checks the context it is given and echoes what it saw:
the served name, the manifest's own name, system properties, a request header, and each
request's values (their names, types and lengths). `?status=N` sets the answer's status,
`?type=T` its media type, a value "raise" raises, "refuse" raises PredictionException."""
import os

from mms.service import PredictionException


class CheckedContext:
    def initialize(self, context):
        properties = context.system_properties
        assert os.path.isfile(os.path.join(properties["model_dir"], "MAR-INF", "MANIFEST.json"))
        assert properties["batch_size"] >= 1
        assert "gpu_id" in properties and properties["server_name"]
        assert context.manifest["model"]["handler"] == "checked_context"
        self.loaded_as = context.model_name

    def handle(self, data, context):
        answers = []
        for idx, request in enumerate(data):
            if request.get("action") in (b"raise", "raise"):
                raise ValueError("asked to raise")
            if request.get("action") in (b"refuse", "refuse"):
                raise PredictionException("asked to refuse", 422)
            seen = {name: [type(value).__name__,
                           len(value) if isinstance(value, (bytes, str)) else value]
                    for name, value in sorted(request.items())}
            status = request.get("status")
            if status is not None:
                context.set_response_status(int(status), "", idx)
            if request.get("type") is not None:
                context.set_response_content_type(idx, request["type"].decode())
            answers.append({
                "model_name": context.model_name,
                "loaded_as": self.loaded_as,
                "manifest_name": context.manifest["model"]["modelName"],
                "batch_size": context.system_properties["batch_size"],
                "batch": len(data),
                "header": context.get_request_header(idx, "X-Trace"),
                "authorization": context.get_request_header(idx, "Authorization"),
                "request_id": context.get_request_id(idx),
                "seen": seen,
            })
        return answers
