"""edgeq: FP32 image classifier -> evaluated, benchmarked INT8 edge artifacts.

The public Python API is `__all__` (see edgeq.api); `import edgeq` itself stays light (TensorFlow loads on first use).
"""
import os as _os

# tfmot only supports the Keras 2 API (tf-keras); it must be chosen before TensorFlow is imported.
_os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from edgeq.core import __version__  # noqa: E402
# the stage table (one row per stage) that config validation in edgeq.core reads; core cannot import it itself
from edgeq.stages import registry as _registry  # noqa: E402,F401

__all__ = ["run", "quantize", "load_run", "example", "infer_config", "Run", "ArtifactResult", "__version__"]


def __getattr__(name: str):
    if name in __all__:
        from edgeq import api

        return getattr(api, name)
    raise AttributeError(f"module 'edgeq' has no attribute {name!r}")
