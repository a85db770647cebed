"""A local stand-in for TensorFlow Serving: the same REST surface, real inference on ONNX Runtime.

Run one model per process: `python -m modelserver --host ADDR --rest_api_port PORT --model_name NAME
--model_base_path DIR`. Build the shipped models with `python -m modelserver.build_models`.
Kept import-free so that starting a server loads only what it needs.
"""
