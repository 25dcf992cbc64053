"""Frontends that build the graph IR: ONNX files and torch modules."""
