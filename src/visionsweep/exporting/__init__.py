"""Trained models leaving visionsweep: ONNX files that carry their own metadata, and running them with
ONNX Runtime (docs/deployment.md)."""
