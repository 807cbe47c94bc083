"""PyTorch methods: NNCF quantisation-aware fine-tuning and its QDQ ONNX / INT8 TFLite export."""
