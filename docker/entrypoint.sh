#!/bin/sh
# Entrypoint of the device images: options go to the edgeq on-device agent, a command runs as is.
#   docker run IMAGE --model /work/m.tflite --runs 100   -> python3 agent.py --model ... (one JSON object)
#   docker run IMAGE                                     -> python3 agent.py --info
#   docker run IMAGE trtexec --onnx=/work/m.onnx ...     -> trtexec (or bash, python3, ...)
set -e
agent=${EDGEQ_AGENT:-/opt/edgeq/agent.py}
case "${1:-}" in
  "") exec python3 "$agent" --info ;;
  -*) exec python3 "$agent" "$@" ;;
  agent) shift; exec python3 "$agent" "$@" ;;
  *) exec "$@" ;;
esac
