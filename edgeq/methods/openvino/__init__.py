"""OpenVINO IR conversion and NNCF's post-training quantization routes (plain functions; no knowledge of runs)."""
