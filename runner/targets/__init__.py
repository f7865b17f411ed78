"""Device targets: which file runs on *this* board, in how much RAM and flash, how fast, and with
which labels. Every ``.tflite`` row is checked in the target's own runtime (one module per
runtime behind :class:`runner.targets.base.Target`): ``host`` (LiteRT on this machine, the
default: no extra columns), ``tflm`` (TFLite Micro's interpreter, reference kernels) and
``ethos_u`` (Arm's Vela compiler for an Ethos-U NPU, with TFLite Micro for the CPU part). A
runtime that can abort its process (Vela dies with SIGFPE on int4 files) runs in a child process:
such a file is a row with its reason, never a dead run."""
