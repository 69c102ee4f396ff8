"""The torch side: load local checkpoints, bake learned tokens, export and validate ONNX networks."""
