"""ondevice"""
