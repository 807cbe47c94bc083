"""One place that imports TensorFlow and the Keras 2 (tf-keras) API, quietly.

TensorFlow's C++ side writes INFO lines (oneDNN, CUDA probing, converter chatter) straight to file
descriptor 2, where no environment variable reaches them any more; `quiet_stderr` captures fd 2
around such calls and replays the text only if the call fails (or EDGEQ_VERBOSE=1).
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile

_TF = None


@contextlib.contextmanager
def quiet_stderr():
    if os.environ.get("EDGEQ_VERBOSE") == "1":
        yield
        return
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, ValueError, OSError):  # pytest capture or no real fd
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), fd)
        ok = False
        try:
            yield
            ok = True
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            if not ok:
                tmp.seek(0)
                text = tmp.read().decode(errors="replace")
                if text.strip():
                    sys.stderr.write(text[-4000:])


def tf():
    global _TF
    if _TF is None:
        os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        with quiet_stderr():
            import tensorflow as tf_

        tf_.get_logger().setLevel(logging.ERROR)
        _TF = tf_
    return _TF


def keras():
    tf()
    import tf_keras

    return tf_keras


def set_seed(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    tf().random.set_seed(seed)
