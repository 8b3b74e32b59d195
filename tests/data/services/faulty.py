"""A test service for the noop archive whose input picks a fault (a 0.4-style module).

First number of the request's tensor:
  -1      the model's code raises for this request only
  s > 0   it sleeps s seconds first (a slow model, or one that hangs past the deadline)
  else    it answers like noop (output = input)
Every request that reaches the model is appended to $FAULTY_LOG (when set), so a test can tell which
requests ran.
"""
import os
import time

import numpy as np
from mms.model_service.mxnet_model_service import MXNetBaseService


class FaultyService(MXNetBaseService):
    def _preprocess(self, data):
        row = np.asarray(data[0], dtype=float).ravel().tolist()
        first = row[0]
        log_path = os.environ.get("FAULTY_LOG")
        if log_path:
            with open(log_path, "a") as log:
                log.write(f"{row}\n")
        if first == -1:
            raise ValueError("this model refuses -1")
        if first > 0:
            time.sleep(first)
        return super()._preprocess(data)
