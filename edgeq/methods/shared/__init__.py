"""methods/shared"""
