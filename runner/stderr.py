"""Catching what C++ libraries write straight to file descriptor 2, keeping what matters.

TensorFlow, its converter and LiteRT print start-up and progress lines from C++ (no Python
logging to configure): "failed call to cuInit", "Created TensorFlow Lite XNNPACK delegate",
"fully_quantize: 0, ...". :func:`filtered` sends descriptor 2 to a temporary file for a block and
then passes on every line that is not known noise. ``RUNNER_VERBOSE=1`` (what ``verbose=true``
sets) turns the filter off. Imports nothing heavy.
"""

from __future__ import annotations

import contextlib
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
)


def verbose() -> bool:
    return os.environ.get("RUNNER_VERBOSE", "") not in ("", "0", "false")


@contextlib.contextmanager
def filtered(hidden: list[str] | None = None) -> Iterator[None]:
    """Within the block, C++ output on descriptor 2 is held back; non-noise lines are re-printed
    after it (also when it raises). Hidden lines are appended to ``hidden`` when given."""
    if verbose():
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
