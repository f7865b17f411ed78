"""A quiet start: TensorFlow's C++ start-up chatter hidden, real errors kept.

On a CPU machine TensorFlow prints, whatever ``TF_CPP_MIN_LOG_LEVEL`` says, lines such as
"E0000 ... failed call to cuInit: INTERNAL: CUDA error", "Could not find cuda drivers on your
machine" and "oneDNN custom operations are on": C++ writes them straight to file descriptor 2
while TensorFlow is imported and its devices are first listed. :func:`start_tensorflow` does both
inside :func:`runner.stderr.filtered`, which passes on every line that is not known noise.
``verbose=true`` shows everything.
"""

from __future__ import annotations

import logging
import os

from runner.stderr import filtered

# Python loggers whose records belong in the run's log file, not on the terminal.
FILE_ONLY_LOGGERS = ("py.warnings", "tensorflow", "absl", "h5py")


def start_tensorflow(verbose: bool = False) -> list[str]:
    """Import TensorFlow (and tf_keras) and list its devices, hiding the known start-up noise.

    ``verbose`` shows everything, here and in every later conversion and interpreter start
    (it sets ``RUNNER_VERBOSE=1`` for :func:`runner.stderr.filtered`).

    Returns:
        The lines hidden.
    """
    if verbose:
        os.environ["RUNNER_VERBOSE"] = "1"
    hidden: list[str] = []
    with filtered(hidden):
        import tensorflow as tf
        import tf_keras  # noqa: F401 - the Keras every model is built with

        tf.config.list_physical_devices()
    return hidden


def warnings_to_log_file() -> None:
    """Python warnings and TensorFlow's own Python logging go to the run's log file only.

    Hydra gives the root logger a console handler and a file handler; the loggers in
    :data:`FILE_ONLY_LOGGERS` keep just the file handler(s).
    """
    logging.captureWarnings(True)
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    for name in FILE_ONLY_LOGGERS:
        logger = logging.getLogger(name)
        logger.propagate = False
        for h in files:
            if h not in logger.handlers:
                logger.addHandler(h)
        if not files:
            logger.addHandler(logging.NullHandler())
