"""Metrics: classification, and detection/segmentation (VOC and COCO)."""
