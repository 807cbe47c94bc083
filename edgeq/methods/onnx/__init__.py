"""methods/onnx"""
