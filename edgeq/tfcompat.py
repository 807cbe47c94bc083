"""One place that imports TensorFlow and the Keras 2 (tf-keras) API, quietly."""
from __future__ import annotations

import logging
import os


def tf():
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import tensorflow as tf_

    tf_.get_logger().setLevel(logging.ERROR)
    return tf_


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
