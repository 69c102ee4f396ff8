"""Serving from a Triton Inference Server: the model-repository generator, the python-backend models
(networks on ONNX Runtime, pipelines through BLS), the request contract of the pipelines, and the
launcher for the tritonserver binary bundled in nvidia-pytriton. Generated repositories are git-ignored.
"""
