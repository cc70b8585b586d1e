"""The command line: `sttrl [run flags]`, `sttrl prepare ...`, `sttrl report ...`,
`sttrl serve [run flags] [serve flags]`.

`python main.py` at the repo root is the same parser. Flags override a --config YAML file,
which overrides the defaults in `sttrl.config.Config`.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import re
import sys
from dataclasses import fields
from pathlib import Path

from sttrl.config import Config, field_kinds, option_problem, validate
from sttrl.errors import EngineError, UserError


def field_help() -> dict[str, str]:
    """Each field's docstring (the string literal under it in the class body), for --help."""
    tree = ast.parse(inspect.getsource(Config))
    body = tree.body[0].body
    out = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) \
                and isinstance(getattr(nxt, "value", None), ast.Constant):
            out[node.target.id] = nxt.value.value
    return out


def load_yaml(path: str) -> dict:
    """The options a --config file sets, each checked against its rule; every problem is one
    line that names the file."""
    import yaml

    p = Path(path)
    if p.is_dir():
        raise UserError(f"--config {path} is a directory; give a YAML file of option: value")
    if not p.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror or err}; fix its permissions") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"{path}: invalid YAML{where}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of option: value")
    if isinstance(data.get("lora_target_modules"), list):  # a YAML list reads as the flag does
        data["lora_target_modules"] = ",".join(map(str, data["lora_target_modules"]))
    known = {f.name for f in fields(Config)}
    unknown = sorted(set(map(str, data)) - known)
    if unknown:
        raise UserError(f"{path}: unknown option(s) {', '.join(unknown)}")
    kinds = field_kinds()
    for name, value in data.items():
        if kinds[name] is float and isinstance(value, str):
            # YAML 1.1 reads 1e-5 (no dot) as a string; it is the number it looks like
            try:
                data[name] = value = float(value)
            except ValueError:
                pass
        problem = option_problem(name, value)
        if problem:
            raise UserError(f"{path}: {problem.replace(f'--{name}', name, 1)}")
    return data


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag gets one line saying what is allowed, not the whole usage."""

    def __init__(self, *args, **kwargs):
        # --n_vote must not quietly run as --n_votes
        super().__init__(*args, **{"allow_abbrev": False, **kwargs})
        # argparse reads -1e-5 as a flag (its pattern knows only -1 and -.5): as a number, it
        # gets the flag's own message ("--lr must be > 0"), not "expected one argument"
        self._negative_number_matcher = re.compile(
            r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|infinity|nan)$", re.IGNORECASE)

    def error(self, message):
        self.exit(2, f"sttrl: error: {message} (see --help)\n")


def str2bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="sttrl", description="Single-sample test-time RL: adapt a model "
                           "to each question with label-free rewards. Subcommands: prepare, report, serve.")
    parser.add_argument("--config", help="YAML file of option: value (flags override it)")
    helps, kinds = field_help(), field_kinds()
    for f in dataclasses.fields(Config):
        flag, default = f"--{f.name}", f.default
        text = f"{helps.get(f.name, '')} (default: {default})"
        if kinds[f.name] is bool:
            # `--continuous` alone means true; `--continuous false` is also accepted
            parser.add_argument(flag, nargs="?", const=True, type=str2bool,
                                default=argparse.SUPPRESS, help=text)
        else:
            parser.add_argument(flag, type=kinds[f.name], default=argparse.SUPPRESS, help=text,
                                metavar=f.name.upper())
    return parser


def option_values(args: dict) -> dict:
    """The options a --config file and the flags set (flags win), unvalidated."""
    values = load_yaml(args.pop("config")) if args.get("config") else {}
    args.pop("config", None)
    values.update(args)
    return values


def parse_config(argv: list[str]) -> Config:
    return validate(Config(**option_values(vars(build_parser().parse_args(argv)))))


def serve_main(argv: list[str]) -> int:
    """`sttrl serve [run flags] [serve flags]`: the run's flags are the server's defaults."""
    from sttrl.serve.main import add_flags, serve, split_args

    parser = add_flags(build_parser())
    parser.prog = "sttrl serve"
    values, opts = split_args(vars(parser.parse_args(argv)))
    try:
        return serve(option_values(values), opts)
    except EngineError as err:  # a server has no questions to resume: say only what failed
        print(f"sttrl serve: engine error: {err}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv and argv[0] == "prepare":
            from sttrl.data.prepare import main as prepare_main
            return prepare_main(argv[1:])
        if argv and argv[0] == "report":
            from sttrl.reporting.report import main as report_main
            return report_main(argv[1:])
        if argv and argv[0] == "serve":
            return serve_main(argv[1:])
        cfg = parse_config(argv)
        from sttrl.run import run
        summary = run(cfg)
    except UserError as err:
        print(f"sttrl: error: {err}", file=sys.stderr)
        return 2
    except EngineError as err:
        print(f"sttrl: engine error: {err}; finished questions are saved, re-run the same "
              "command to resume", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("sttrl: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    shown = {k: v for k, v in summary.items() if k != "config"}
    print(json.dumps(shown, indent=2))
    print(f"results in {summary['config']['output_dir']}")
    return 0
