"""The LIBERO benchmark: environment setup and observation/action conventions (`env`), and spawned
simulator worker processes (`workers`).

Nothing here imports tensorflow, and nothing imports `libero`/`robosuite`/`mujoco` at module import time:
the LIBERO config file, the assets symlink and the headless-GL choice must be in place first, which
`prismatic.sim.libero.env.prepare_libero()` does (every env-building function calls it).
"""
