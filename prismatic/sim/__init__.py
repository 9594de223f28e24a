"""Simulator code. Modules under `prismatic.sim` never import tensorflow (directly or indirectly):
TensorFlow and MuJoCo rendering both bundle LLVM and crash when they share a process, so simulators run
in spawned worker processes that import only from here (see `prismatic.sim.libero.workers`)."""
