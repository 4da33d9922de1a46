"""A TensorFlow-Serving-compatible model server: a *stand-in*, not TensorFlow Serving.

The real ``tensorflow_model_server`` binary cannot be installed on every machine (it ships as a
container image and from Google's apt repository). Tests and the no-Docker local stack run this
package instead; launchers prefer the real binary whenever it is on PATH and pass both the same argv.

It serves real SavedModels with TensorFlow (a TF1 session per version, as TF Serving itself does),
and reproduces TF Serving's observable surface: command-line flags, REST paths, JSON formats,
error messages and status codes, the gRPC PredictionService and ModelService, version policies,
labels, config reloads and file-system polling.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
