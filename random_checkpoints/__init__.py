"""Checkpoint writers for tests and benchmarks: the real on-disk formats (diffusers, transformers, A1111 /
civitai / diffusers embeddings) with seeded random weights, at tiny or full size, so the real loading code
runs without a model hub. Torch side, like ``export``."""
