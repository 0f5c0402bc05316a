"""Inference engines behind one runner interface: Torch eager, ONNX Runtime (CPU, CUDA, TensorRT).

``runners.create_runner`` builds them; ``providers`` chooses and creates ONNX Runtime sessions.
"""
