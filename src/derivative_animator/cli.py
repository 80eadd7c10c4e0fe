"""`derivanim`: the command line.

    derivanim parse "x^2 sin x" [--json]
    derivanim generate "e^{-x^2}" --backend template -o scene.py [--style secant]
    derivanim check scene.py --function "e^{-x^2}" [--json]

A function may start with a minus without `--`: `derivanim parse "-x^2"` (see `shield_functions`).

Exit codes: 0 success, 1 a check failed, 2 bad input (one line `error: ...`),
3 the machine cannot render (missing LaTeX, cairo, ...).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from derivative_animator import paths
from derivative_animator.data import scenes
from derivative_animator.data.oracle import CannotAnimate, describe, template_scene
from derivative_animator.errors import one_line
from derivative_animator.eval.service import GenerationService
from derivative_animator.eval.wording import marks
from derivative_animator.math.differentiate import UnsupportedFunction
from derivative_animator.math.parsing import ParseError, function_lines, parse_function
from derivative_animator.model.settings import VIDEO_QUALITIES, GenerationSettings
from derivative_animator.render.sandbox import SandboxUnavailable

EXIT_FAILED, EXIT_USAGE, EXIT_ENVIRONMENT = 1, 2, 3
UNSAFE_HELP = (
    "where bubblewrap cannot run, run generated code anyway, WITHOUT isolation from this "
    "machine (only for code you trust)"
)


class UsageError(Exception):
    """A mistake in what the user asked for: reported in one line, exit code 2."""


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
    paths.write_atomic(path, text)


def generation_settings(args) -> GenerationSettings:
    """The `generate` flags as settings: conf/generate (their defaults) with this call's changes."""
    voting = bool(args.self_consistency)
    defaults = GenerationSettings.defaults()
    return defaults.changed(
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        attempts=1 if args.no_verify else args.attempts,
        syntax_rollbacks=args.syntax_rollbacks,
        repair=args.repair,
        bracket_guard=args.bracket_guard,
        shared_code=args.shared_code,
        copy_function=args.copy_function,
        choose_interval=args.choose_interval,
        video_quality=args.quality,
        self_consistency={
            "k": args.self_consistency or defaults.self_consistency.k,
            "vote": voting,
            "temperature": args.self_consistency_temperature,
        },
    )


def _check_sampling_args(args) -> None:
    """Model settings that would crash or silently do nothing: one clear line instead."""
    rules = [
        (args.attempts >= 1, f"--attempts must be 1 or more, got {args.attempts}"),
        (
            args.max_new_tokens >= 1,
            f"--max-new-tokens must be 1 or more, got {args.max_new_tokens}",
        ),
        (
            args.temperature >= 0,
            f"--temperature must be 0 (greedy) or more, got {args.temperature}",
        ),
        (0 < args.top_p <= 1, f"--top-p must be in (0, 1], got {args.top_p}"),
        (
            args.syntax_rollbacks >= 0,
            f"--syntax-rollbacks must be 0 or more, got {args.syntax_rollbacks}",
        ),
        (
            args.self_consistency >= 0,
            f"--self-consistency must be 0 (off) or more samples, got {args.self_consistency}",
        ),
        (
            args.self_consistency_temperature > 0,
            "--self-consistency-temperature must be above 0, "
            f"got {args.self_consistency_temperature}",
        ),
    ]
    for ok, message in rules:
        if not ok:
            raise UsageError(message)


def cmd_generate(args) -> int:
    _check_sampling_args(args)  # the template backend too: the settings refuse what cannot work
    with GenerationService(
        generation_settings(args), allow_unsandboxed=args.unsafe_no_sandbox
    ) as service:
        return _generate(args, service)


def _generate(args, service: GenerationService) -> int:
    if args.backend == "template" and not args.model:
        if args.interactive or args.from_file:
            raise UsageError("--interactive and --from-file need --model DIR")
        if args.function is None:
            raise UsageError("give the FUNCTION to animate, e.g. derivanim generate 'x^2 sin x'")
        code = template_scene(args.function, args.style or "tangent")
        return _emit(code, args, args.function, service)
    if not args.model:
        raise UsageError("pass --model DIR (a merged checkpoint) or --backend template")
    service.start_sandbox()  # Manim imports in the sandbox while the model loads
    from derivative_animator.data.prompt import PromptFormatError

    try:
        service.load_model(args.model, allow_prompt_mismatch=args.allow_prompt_mismatch)
    except (PromptFormatError, FileNotFoundError, OSError) as err:
        raise UsageError(str(err)) from None
    say = lambda message: print(message, file=sys.stderr)  # noqa: E731
    if args.interactive:
        return _interactive(service, args, say)
    if args.from_file:
        return _from_file(service, args, say)
    if args.function is None:
        raise UsageError("give a FUNCTION, or --from-file, or -i")
    parse_function(args.function)  # a bad function fails here, before any model time
    written = service.write(args.function, say, style=args.style)
    rc = _emit(written.code, args, args.function, service, written)
    return rc if (written.result is None or written.result.passed) else EXIT_FAILED


def model_scene_path(target: Path) -> Path:
    """Where the model's own try goes when the scene shown is the corrected one: beside it,
    `scene.py` -> `scene.model.py`."""
    return target.with_name(f"{target.stem}.model{target.suffix or '.py'}")


def _write_scenes(target: Path, written, force: bool) -> str:
    """The shown scene to `target` and, when it is the corrected one, the model's own try beside
    it (`model_scene_path`); neither overwrites a file unless forced, and neither is written if
    either would. What was written, in words."""
    if not written.corrected:
        write_new_file(target, written.code, force)
        return f"wrote {target}"
    beside = model_scene_path(target)
    for path in (target, beside):
        if path.exists() and not force:
            raise UsageError(f"{path} already exists; choose another -o path or pass --force")
    write_new_file(target, written.code, force)
    write_new_file(beside, written.model_code, force)
    return f"wrote {target} (the corrected scene) and {beside} (the model's own scene)"


def _emit(code: str, args, function: str, service: GenerationService, written=None) -> int:
    if args.output:
        if written is not None:
            print(_write_scenes(Path(args.output), written, args.force), file=sys.stderr)
        else:
            write_new_file(Path(args.output), code, args.force)
            print(f"wrote {args.output}", file=sys.stderr)
        if args.render:
            out_dir = Path(args.output).with_suffix("")
            result = service.check(code, function, render=True, output_dir=out_dir)
            print(
                f"render: {marks(result)}; video and last frame in {out_dir}/"
                + (f"  {result.error}" if result.error else ""),
                file=sys.stderr,
            )
            return 0 if result.passed else EXIT_FAILED
    else:
        if args.render:
            raise UsageError("--render needs -o FILE.py (the video goes next to it)")
        sys.stdout.write(code)
        if written is not None and written.corrected:
            print(
                "printed the corrected scene; the model's own scene is kept only with -o FILE.py "
                "(written beside it as FILE.model.py)",
                file=sys.stderr,
            )
    return 0


def _from_file(service: GenerationService, args, say) -> int:
    """One scene a line, each written as `derivanim generate` writes one (`GenerationService.write`:
    the same stops, guard, header judge and tries). A line that does not parse, or a scene whose
    generation or check fails unexpectedly, is reported and counted as failed; the other lines
    go on. Exit 1 if any failed."""

    path = Path(args.from_file)
    if not path.is_file():
        raise UsageError(f"{path} not found")
    functions, bad = [], []
    for number, text in function_lines(path):
        try:
            parse_function(text)
        except ParseError as err:
            bad.append(f"{path.name}:{number}: {err}")
            continue
        functions.append(text)
    out_dir = Path(args.output or "generated")
    if out_dir.exists() and any(out_dir.iterdir()) and not args.force:
        raise UsageError(f"{out_dir} is not empty; choose another -o directory or pass --force")
    out_dir.mkdir(parents=True, exist_ok=True)
    for problem in bad:
        say(f"error: {problem}")
    failures = len(bad)
    for index, function in enumerate(functions, 1):
        target = out_dir / f"scene_{index:03d}.py"
        say(f"{target}: f(x) = {function}")
        try:
            written = service.write(function, say, style=args.style)
        except (SandboxUnavailable, KeyboardInterrupt):
            raise
        except Exception as err:  # noqa: BLE001 - one function's failure is its own line
            failures += 1
            say(f"{target}: f(x) = {function}: failed: {one_line(err)}")
            continue
        said = _write_scenes(target, written, args.force)
        failures += not written.result.passed
        say(
            f"{target}: f(x) = {function}: {marks(written.result)}"
            + ("; " + said if written.corrected else "")
        )
    total = len(functions) + len(bad)
    say(f"{total - failures} of {total} lines gave a scene that passed every check")
    return 0 if failures == 0 else EXIT_FAILED


def _interactive(service: GenerationService, args, say) -> int:
    say("Type a function of x (e.g. x^2 sin x); an empty line or Ctrl-D quits.")
    counter = 0
    while True:
        try:
            text = input("f(x) = ").strip()
        except EOFError:
            return 0
        if not text:
            return 0
        try:
            parse_function(text)
        except ParseError as err:
            say(f"error: {err}")
            continue
        written = service.write(text, say, style=args.style)
        counter += 1
        target = Path(args.output or ".") / f"scene_{counter:03d}.py"
        while target.exists() or model_scene_path(target).exists():
            counter += 1
            target = target.with_name(f"scene_{counter:03d}.py")
        said = _write_scenes(target, written, False)
        say(f"{'passed' if written.result and written.result.passed else 'FAILED'}: {said}")


def cmd_check(args) -> int:
    from derivative_animator.render import checks
    from derivative_animator.render.sandbox_limits import SandboxLimits

    path = Path(args.file)
    if not path.is_file():
        raise UsageError(f"{path} not found")
    if args.timeout <= 0:
        raise UsageError(f"--timeout must be above 0 seconds, got {args.timeout}")
    target = parse_function(args.function)
    render = checks.RenderOptions(
        quick=args.quick,
        save_frame=args.output_dir is not None,
        limits=SandboxLimits(timeout_s=args.timeout),
        unsafe_no_sandbox=args.unsafe_no_sandbox,
    )
    result = checks.check_code(
        path.read_text(),
        target,
        execute=not args.no_execute,
        render=render,
        output_dir=Path(args.output_dir) if args.output_dir else None,
    )
    if args.json:
        print(json.dumps({k: v for k, v in result.to_dict().items()}, indent=2))
    else:
        for name in checks.REPORTED:
            value = getattr(result, name)
            mark = "pass" if value else ("skipped" if value is None else "FAIL")
            print(f"{name:10} {mark}")
        if result.error:
            print(f"error: {result.error}")
        for problem in result.layout_problems:
            print(f"layout: {problem}")
    if result.environment_error:
        return EXIT_ENVIRONMENT
    executed_ok = result.executes or (args.no_execute and result.executes is None)
    return (
        0 if (result.syntax and result.structure and result.math and executed_ok) else EXIT_FAILED
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="derivanim", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "parse", help="parse a function as people type it; print f, f', level, steps"
    )
    p.add_argument("function")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_parse)

    p = sub.add_parser(
        "generate", help="write a Manim scene for a function (template oracle or a model)"
    )
    p.add_argument("function", nargs="?")
    p.add_argument(
        "--backend",
        choices=["template", "model"],
        default="template",
        help="template: the oracle, the dataset's template with the true derivative",
    )
    p.add_argument("--model", help="merged checkpoint dir (implies --backend model)")
    p.add_argument(
        "--style",
        choices=scenes.STYLES,
        help="the scene's style: the tangent sliding along f, the secant becoming the tangent, or "
        "the rule steps (default: the model's choice; the template's is tangent)",
    )
    p.add_argument("-o", "--output", help="scene file (or directory with --from-file / -i)")
    p.add_argument("--force", action="store_true", help="overwrite existing output")
    p.add_argument(
        "--render", action="store_true", help="also render: mp4 and last-frame PNG beside -o"
    )
    p.add_argument("--from-file", help="a file with one function per line (batched generation)")
    p.add_argument(
        "-i", "--interactive", action="store_true", help="a prompt loop showing each check"
    )
    g = (
        GenerationSettings.defaults()
    )  # conf/generate, the one home of these defaults: flags override it
    p.add_argument(
        "--quality",
        choices=list(VIDEO_QUALITIES),
        default=g.video_quality,
        help="the video's resolution with --render: "
        + ", ".join(f"{q} {size}" for q, size in VIDEO_QUALITIES.items()),
    )
    p.add_argument(
        "--temperature",
        type=float,
        default=g.temperature,
        help="0: greedy (the first scene, and the completions of sampled headers)",
    )
    p.add_argument("--top-p", type=float, default=g.top_p)
    p.add_argument("--max-new-tokens", type=int, default=g.max_new_tokens)
    p.add_argument("--seed", type=int, default=g.seed)
    p.add_argument(
        "--attempts",
        type=int,
        default=g.attempts,
        help="verified generation: the first scene, then at most N-1 of the sampled math headers "
        "the math judge accepts, completed and checked",
    )
    p.add_argument(
        "--no-verify", action="store_true", help="return the first sample, checked but not retried"
    )
    p.add_argument(
        "--self-consistency",
        type=int,
        nargs="?",
        const=g.self_consistency.k,
        default=g.self_consistency.k if g.self_consistency.vote else 0,
        metavar="K",
        help="the first scene takes the math header most of K sampled headers agree on "
        f"(no oracle; K: {g.self_consistency.k} if not given, also the headers verification "
        "samples)",
    )
    p.add_argument(
        "--self-consistency-temperature",
        type=float,
        default=g.self_consistency.temperature,
        help="sampling temperature of the math headers that vote and that verification completes "
        "(lower ones mostly repeat greedy's)",
    )
    p.add_argument(
        "--syntax-rollbacks",
        type=int,
        default=g.syntax_rollbacks,
        help="sampled attempts: re-sample a line that breaks the syntax, up to N times",
    )
    p.add_argument(
        "--repair",
        action=argparse.BooleanOptionalAction,
        default=g.repair,
        help="when no try passes and one is wrong only in its derivative, show that scene with the "
        "true derivative, checked again and labelled as corrected, the model's own scene kept "
        "beside -o as FILE.model.py (--no-repair: the model's try as it is)",
    )
    p.add_argument(
        "--bracket-guard",
        action=argparse.BooleanOptionalAction,
        default=g.bracket_guard,
        help="keep the math header's brackets balanced (--no-bracket-guard: let the model close "
        "brackets it never opened or end a header line with one open)",
    )
    p.add_argument(
        "--shared-code",
        action=argparse.BooleanOptionalAction,
        default=g.shared_code,
        help="after the model's math header, decoding writes the code every scene of the style "
        "holds (--no-shared-code: the model writes the whole scene)",
    )
    p.add_argument(
        "--copy-function",
        action=argparse.BooleanOptionalAction,
        default=g.copy_function,
        help="decoding writes the docstring's f(x) line from the prompt (--no-copy-function: the "
        "model copies the function itself)",
    )
    p.add_argument(
        "--choose-interval",
        action=argparse.BooleanOptionalAction,
        default=g.choose_interval,
        help="decoding writes the plotting interval where f and the model's f' are defined "
        "(--no-choose-interval: the model writes it)",
    )
    p.add_argument(
        "--allow-prompt-mismatch",
        action="store_true",
        help="query a checkpoint trained with another prompt format, using its own format",
    )
    p.add_argument("--unsafe-no-sandbox", action="store_true", help=UNSAFE_HELP)
    p.set_defaults(run=cmd_generate)

    p = sub.add_parser("check", help="check a scene file: syntax, structure, executes, math")
    p.add_argument("file")
    p.add_argument("--function", required=True, help="the function the scene should animate")
    p.add_argument("--json", action="store_true")
    p.add_argument("--no-execute", action="store_true", help="skip the Manim render")
    p.add_argument(
        "--quick",
        "--dry-run",
        action="store_true",
        help="render at 1 frame per second: every animation runs, faster",
    )
    p.add_argument("--timeout", type=float, default=120.0, help="render time limit in seconds")
    p.add_argument("--output-dir", help="keep the rendered video and last frame here")
    p.add_argument("--unsafe-no-sandbox", action="store_true", help=UNSAFE_HELP)
    p.set_defaults(run=cmd_check)

    p = sub.add_parser("serve", help="an OpenAI-compatible API and a web page for a checkpoint")
    p.add_argument("--model", required=True, help="a merged checkpoint dir")
    p.add_argument(
        "--host", default="127.0.0.1", help="interface to bind (default: this machine only)"
    )
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--queue", type=int, default=4, help="requests that may wait; more are answered 503 busy"
    )
    p.add_argument(
        "--output-dir", default="outputs/serve", help="where the page's scenes and videos go"
    )
    p.add_argument(
        "--quality",
        choices=list(VIDEO_QUALITIES),
        default=GenerationSettings.defaults().video_quality,
        help="the page's videos: " + ", ".join(f"{q} {s}" for q, s in VIDEO_QUALITIES.items()),
    )
    p.add_argument("--unsafe-no-sandbox", action="store_true", help=UNSAFE_HELP)
    p.set_defaults(run=cmd_serve)
    return parser


def cmd_serve(args) -> int:
    """derivanim serve (serve.py): the page renders in the sandbox, started here."""
    from derivative_animator import serve
    from derivative_animator.data.prompt import PromptFormatError

    if args.queue < 0:
        raise UsageError(f"--queue must be 0 or more, got {args.queue}")
    try:
        return serve.run(args)
    except (PromptFormatError, FileNotFoundError, OSError) as err:
        raise UsageError(str(err)) from None


# What argparse itself lets through as a value although it starts with '-' (its own test).
_NEGATIVE_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")


def _option_strings(parser: argparse.ArgumentParser) -> set[str]:
    """Every option string of the parser and of its subcommands."""
    found = set()
    for action in parser._actions:
        found.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= _option_strings(sub)
    return found


def shield_functions(
    parser: argparse.ArgumentParser, argv: list[str]
) -> tuple[list[str], dict[str, str]]:
    """argv with each function that starts with a minus ("-x^2", "-sin(x)") made safe from argparse,
    which would take it for an option; and how to undo that on the parsed values.

    A word starting with a single '-' is a function unless argparse could read it as an option of
    this program: one of its short options, alone or with its value attached ("-o", "-oscene.py",
    "-h"), a negative number (argparse leaves "-1" and "-2.5" as values itself), or a word with a
    space (likewise). Words starting with "--" stay options (a mistyped "--jsno" must still be
    reported as one), and everything after a bare "--" is left as it is. A shielded word gets a
    leading space, which argparse never reads as an option; main() takes it off again."""
    short = {option for option in _option_strings(parser) if len(option) == 2 and option[1] != "-"}
    shielded, restore = [], {}
    for k, arg in enumerate(argv):
        if arg == "--":
            return shielded + argv[k:], restore
        if (
            arg.startswith("-")
            and not arg.startswith("--")
            and len(arg) > 1
            and arg[:2] not in short
            and " " not in arg
            and not _NEGATIVE_NUMBER.match(arg)
        ):
            restore[" " + arg] = arg
            arg = " " + arg
        shielded.append(arg)
    return shielded, restore


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """build_parser().parse_args, with functions that start with a minus taken as functions."""
    parser = build_parser()
    argv, restore = shield_functions(parser, sys.argv[1:] if argv is None else list(argv))
    args = parser.parse_args(argv)
    for name, value in vars(args).items():
        if isinstance(value, str) and value in restore:
            setattr(args, name, restore[value])
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    try:
        return args.run(args)
    except (ParseError, UsageError, UnsupportedFunction, CannotAnimate) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except SandboxUnavailable as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ENVIRONMENT
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
