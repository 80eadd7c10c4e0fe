"""`derivanim`: the command line.

    derivanim parse "x^2 sin x" [--json]
    derivanim generate "e^{-x^2}" --backend template -o scene.py [--style secant]
    derivanim check scene.py --function "e^{-x^2}" [--json]

Exit codes: 0 success, 1 a check failed, 2 bad input (one line `error: ...`),
3 the machine cannot render (missing LaTeX, cairo, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from derivative_animator import curriculum, notation, scenes
from derivative_animator.differentiate import UnsupportedFunction, differentiate, level_of
from derivative_animator.parsing import ParseError, parse_function

EXIT_FAILED, EXIT_USAGE, EXIT_ENVIRONMENT = 1, 2, 3


class UsageError(Exception):
    """A mistake in what the user asked for: reported in one line, exit code 2."""


def describe(text: str) -> dict:
    """Everything `parse --json` reports about a typed function."""
    expr = parse_function(text)
    derivative, steps = differentiate(expr)
    level = level_of(steps)
    return {
        "input": text,
        "function": notation.typed(expr),
        "sympy": str(expr),
        "derivative": notation.typed(derivative),
        "derivative_sympy": str(derivative),
        "function_latex": notation.latex(expr),
        "derivative_latex": notation.latex(derivative),
        "level": level,
        "level_name": curriculum.LEVEL_NAMES[level],
        "steps": [{"rule": s.rule, "expression": str(s.expr), "derivative": str(s.derivative)}
                  for s in scenes.shown_steps(steps)],
    }


def cmd_parse(args) -> int:
    info = describe(args.function)
    if args.json:
        print(json.dumps(info, indent=2, ensure_ascii=False))
    else:
        print(f"f(x)  = {info['function']}")
        print(f"f'(x) = {info['derivative']}")
        print(f"level {info['level']}: {info['level_name']}")
        for step in info["steps"]:
            print(f"  {step['rule']}: d/dx[{step['expression']}] = {step['derivative']}")
    return 0


def write_new_file(path: Path, text: str, force: bool = False) -> None:
    """Write atomically; never clobber an existing file unless asked to."""
    if path.exists() and not force:
        raise UsageError(f"{path} already exists; choose another -o path or pass --force")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with os.fdopen(handle, "w") as out:
        out.write(text)
    os.replace(temp, path)


def template_scene(function: str, style: str) -> str:
    analysed = curriculum.analyse(parse_function(function))
    if analysed is None:
        raise UsageError(
            f"cannot animate f(x) = {function}: it is constant, or not real and finite on any "
            "plotting interval tried; try a non-constant function defined near 0 or on (0, 4)"
        )
    return scenes.scene_code(analysed.expr, analysed.derivative, analysed.steps, analysed.x_range, style)


def cmd_generate(args) -> int:
    if args.backend == "template":
        code = template_scene(args.function, args.style)
    else:
        raise UsageError(f"unknown backend {args.backend!r}")
    if args.output:
        write_new_file(Path(args.output), code, args.force)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(code)
    return 0


def cmd_check(args) -> int:
    from derivative_animator import checks
    from derivative_animator.sandbox import SandboxLimits

    path = Path(args.file)
    if not path.is_file():
        raise UsageError(f"{path} not found")
    target = parse_function(args.function)
    render = checks.RenderOptions(dry_run=args.dry_run, save_frame=args.output_dir is not None,
                                  limits=SandboxLimits(timeout_s=args.timeout))
    result = checks.check_code(path.read_text(), target, execute=not args.no_execute, render=render,
                               output_dir=Path(args.output_dir) if args.output_dir else None)
    if args.json:
        print(json.dumps({k: v for k, v in result.to_dict().items()}, indent=2))
    else:
        for name in ("syntax", "structure", "executes", "math"):
            value = getattr(result, name)
            mark = "pass" if value else ("skipped" if value is None else "FAIL")
            print(f"{name:10} {mark}")
        if result.error:
            print(f"error: {result.error}")
    if result.environment_error:
        return EXIT_ENVIRONMENT
    executed_ok = result.executes or (args.no_execute and result.executes is None)
    return 0 if (result.syntax and result.structure and result.math and executed_ok) else EXIT_FAILED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="derivanim", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("parse", help="parse a function as people type it; print f, f', level, steps")
    p.add_argument("function")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_parse)

    p = sub.add_parser("generate", help="write a Manim scene for a function")
    p.add_argument("function")
    p.add_argument("--backend", choices=["template"], default="template",
                   help="template: the oracle, the dataset's template filled with the true derivative")
    p.add_argument("--style", choices=scenes.STYLES, default="tangent")
    p.add_argument("-o", "--output", help="scene file to write (default: stdout)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.set_defaults(run=cmd_generate)

    p = sub.add_parser("check", help="check a scene file: syntax, structure, executes, math")
    p.add_argument("file")
    p.add_argument("--function", required=True, help="the function the scene should animate")
    p.add_argument("--json", action="store_true")
    p.add_argument("--no-execute", action="store_true", help="skip the Manim render")
    p.add_argument("--dry-run", action="store_true", help="execute without writing video (faster)")
    p.add_argument("--timeout", type=float, default=120.0, help="render time limit in seconds")
    p.add_argument("--output-dir", help="keep the rendered video and last frame here")
    p.set_defaults(run=cmd_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ParseError, UsageError, UnsupportedFunction) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
