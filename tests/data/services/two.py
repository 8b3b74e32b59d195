"""Two services, one built on a base defined here too: the seed kept leaves only."""
from mms.model_service.mxnet_model_service import MXNetBaseService
from mms.model_service.mxnet_vision_service import MXNetVisionService


class CommonBase(MXNetVisionService):
    pass


class FirstService(CommonBase):
    pass


class SecondService(MXNetBaseService):
    pass
