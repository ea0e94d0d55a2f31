"""Serving a trained model: scoring images held in memory in the reference's online format, the HTTP
scoring endpoint and its client (docs/deployment.md)."""
