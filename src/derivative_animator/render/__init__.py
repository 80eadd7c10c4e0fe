"""Rendering untrusted scenes: the sandbox, what runs inside it, and the checks of a rendered
scene (syntax, structure, executes, math, layout). Imports the math layer; no torch."""
