"""A handler whose initialisation fails, as one whose weights are missing would."""


def handle(data, context):
    raise RuntimeError("the weights are missing")
