"""methods/keras"""
