"""Closed-loop evaluation of policies in LIBERO (`EvalConfig`, `run_evaluation`).

Deliberately imports nothing: `prismatic.eval.video` is also used inside the simulator workers, which must
never import tensorflow, and the policy-side modules (preprocessing, VLA policy) import it lazily.
"""
