"""Geometry shared by training and inference: mask rasterising and tracing, tile layout and merging,
YOLO box decoding and NMS. Arrays and tensors in, arrays and tensors out; nothing here knows a record,
a setting or a model family."""
