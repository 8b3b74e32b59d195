"""Image bytes to the NCHW float NDArray a vision model takes."""
import mxnet as mx


def read(buf, flag=1, to_rgb=True):
    return mx.img.imdecode(buf, flag, to_rgb)


def resize(src, new_width, new_height, interp=2):
    return mx.img.imresize(src, new_width, new_height, interp)


def transform_shape(img_arr):
    return mx.nd.expand_dims(mx.nd.transpose(img_arr, (2, 0, 1)), axis=0).astype("float32")
