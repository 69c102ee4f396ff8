"""fashiongen's serving runtime: torch-free (numpy, ONNX Runtime, tokenizers, Pillow).

Nothing here imports torch, diffusers or transformers, nor anything from ``export/`` or ``bench/``.
"""
