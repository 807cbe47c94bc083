"""methods/tflite"""
