"""Model Gateway: one inference API in front of TensorFlow Serving and TorchServe."""

__version__ = "0.1.0"
