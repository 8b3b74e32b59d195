"""A custom service that never finishes loading (a stuck download, a deadlock)."""
import time

from mms.model_service.mxnet_model_service import MXNetBaseService


class HangsAtLoad(MXNetBaseService):
    def __init__(self, *args, **kwargs):
        time.sleep(3600)
