"""The import the scenes of models trained before standalone scenes make (`from
derivative_animator.parsing import typed_line`): they read their own f and f' with the project's
parser when they run. It lives in `math.parsing`; this path stays for those models' scenes
(docs/decisions/0002-typed-math-header.md, 0013-standalone-scenes.md)."""

from derivative_animator.math.parsing import typed_line

__all__ = ["typed_line"]
