"""``python -m runner.targets.tflm_child MODEL INPUTS.npy OUT.npz``: one file in TFLite Micro's
interpreter, in a process of its own (its C++ may abort). Writes the labels of every input (one
invoke each) and the arena TFLite Micro recorded; a file it refuses exits 3 with the runtime's
own reason on stderr (the line before "failed to prepare")."""

from __future__ import annotations

import re
import sys

import numpy as np

ARENA = re.compile(r"Arena allocation total (\d+) bytes")
REFUSED = 3


def main(argv: list[str] | None = None) -> int:
    from tflite_micro.python.tflite_micro import runtime

    from runner.evaluation.fidelity import labels_from_outputs

    model, inputs, out = sys.argv[1:] if argv is None else argv
    data = open(model, "rb").read()  # noqa: SIM115 - read whole, closed at once
    try:  # an arena of 10x the file is TFLite Micro's own default; what it used is recorded
        interp = runtime.Interpreter.from_bytes(data, arena_size=10 * len(data) + (1 << 20))
    except RuntimeError as e:
        print(f"refused: {e}", file=sys.stderr, flush=True)
        return REFUSED
    x = np.load(inputs)
    detail = interp.get_output_details(0)
    q = detail.get("quantization_parameters") or {}
    scales, zeros = q.get("scales"), q.get("zero_points")
    outputs = []
    for i in range(len(x)):
        interp.set_input(x[i : i + 1], 0)
        interp.invoke()
        y = np.asarray(interp.get_output(0), np.float32)
        if scales is not None and len(scales) and np.issubdtype(detail["dtype"], np.integer):
            y = (y - zeros[0]) * scales[0]
        outputs.append(y.reshape(1, -1))
    sys.stdout.flush()
    interp.print_allocations()  # C++ stdout: the parent reads the arena total from it
    labels = labels_from_outputs(np.concatenate(outputs)) if outputs else np.empty(0, int)
    np.savez(out, labels=labels)
    return 0


if __name__ == "__main__":
    sys.exit(main())
