"""Evaluation, behind `python -m derivative_animator.evaluate`: the engine (render queue and
evaluator), each baseline's rows, the figures (per level, pass@k), the generation service
(writing, verifying and repairing scenes; shared with the CLI and the page) and its wording (what
it tells people), and the report.
Imports every layer."""
