"""What reaches the terminal: C++ start-up and progress chatter hidden, real errors kept.

TensorFlow, its converter and LiteRT print lines from C++ straight to file descriptor 2 (no
Python logging to configure): "failed call to cuInit", "oneDNN custom operations are on",
"Created TensorFlow Lite XNNPACK delegate", "fully_quantize: 0, ...". :func:`filtered` sends
descriptor 2 to a temporary file for a block and then passes on every line that is not known
noise. The command line calls :func:`configure` once with the run's ``verbose``; ``verbose=true``
shows everything. Imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator

# Lines TensorFlow / LiteRT print on every CPU-only machine; nothing a user can act on.
NOISE = re.compile(
    r"cuInit|cuda drivers|cudart_stub|CUDA error|Could not find TensorRT|TF-TRT Warning"
    r"|oneDNN custom operations|absl::InitializeLog|Unable to register cu(DNN|FFT|BLAS)"
    r"|computation placer|This TensorFlow binary is optimized|rebuild TensorFlow with"
    r"|port\.cc:\d+\]|cpu_feature_guard|Created TensorFlow Lite XNNPACK delegate"
    r"|fully_quantize: \d|Estimated count of arithmetic ops|^\s*$"
    # ai-edge-quantizer's progress: a calibration bar and an INFO line on the root logger
    r"|Running Calibration:|Serializing model\.\.\."
)
# Python loggers whose records belong in the run's log file, not on the terminal.
FILE_ONLY_LOGGERS = ("py.warnings", "tensorflow", "absl", "h5py")

_verbose = False
_interrupted = False
_terminated = False


class Terminated(KeyboardInterrupt):
    """SIGTERM (``scancel``, a SLURM time limit or preemption, ``kill``): stops a run the way
    Ctrl-C does, with its own exit code (143)."""


def catch_interrupts() -> None:
    """Ctrl-C and SIGTERM are remembered as well as raised: Keras' fit runs its Sequence through
    tf.data, where the KeyboardInterrupt is swallowed and training runs on;
    :func:`check_interrupt` (called between training steps and between stages) raises it again."""
    import signal

    def on_sigint(signum, frame):
        global _interrupted
        _interrupted = True
        signal.default_int_handler(signum, frame)

    def on_sigterm(signum, frame):
        global _interrupted, _terminated
        _interrupted = _terminated = True
        raise Terminated

    signal.signal(signal.SIGINT, on_sigint)
    signal.signal(signal.SIGTERM, on_sigterm)


def check_interrupt(*_: object) -> None:
    """Raise KeyboardInterrupt (:class:`Terminated` after SIGTERM) if Ctrl-C or SIGTERM came
    since :func:`catch_interrupts` (any arguments are ignored, so a Keras callback can call it)."""
    if _terminated:
        raise Terminated
    if _interrupted:
        raise KeyboardInterrupt


def configure(verbose: bool) -> None:
    """``verbose``: show everything (no filtering, warnings on the terminal); else keep Python
    warnings and TensorFlow's Python logging in the run's log file only, and drop the noise
    libraries log on the root logger itself (ai-edge-quantizer's "Serializing model...")."""
    global _verbose
    _verbose = bool(verbose)
    root = logging.getLogger()
    for f in [f for f in root.filters if isinstance(f, _RootNoise)]:
        root.removeFilter(f)
    if not verbose:
        _warnings_to_log_file()
        root.addFilter(_RootNoise())


class _RootNoise(logging.Filter):
    """On the root logger, a filter sees only records logged on it directly (libraries calling
    ``logging.info``), never the runner's own, which propagate from named loggers."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not NOISE.search(record.getMessage())


def verbose() -> bool:
    return _verbose


@contextlib.contextmanager
def filtered(hidden: list[str] | None = None) -> Iterator[None]:
    """Within the block, C++ output on descriptor 2 is held back; non-noise lines are re-printed
    after it (also when it raises). Hidden lines are appended to ``hidden`` when given."""
    if _verbose:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            for line in capture.read().decode("utf-8", "replace").splitlines():
                if NOISE.search(line):
                    if hidden is not None:
                        hidden.append(line)
                else:
                    print(line, file=sys.stderr)


def _warnings_to_log_file() -> None:
    """Hydra gives the root logger a console handler and a file handler; the loggers in
    :data:`FILE_ONLY_LOGGERS` keep just the file handler(s)."""
    logging.captureWarnings(True)
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    for name in FILE_ONLY_LOGGERS:
        logger = logging.getLogger(name)
        logger.propagate = False
        for h in list(logger.handlers):  # an earlier job's file (one process runs several jobs)
            logger.removeHandler(h)
        for h in files or [logging.NullHandler()]:
            logger.addHandler(h)
