from mms.model_service.mxnet_vision_service import MXNetVisionService


class OnlyService(MXNetVisionService):
    pass
