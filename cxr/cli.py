"""The command line of every script: overrides of config.Config's fields, by their types.

    python train.py --epochs 3 --image_size=224 --pretrained false
    python predict.py scans/ extra.dcm --checkpoint models/RUN/best.pth --gradcam Edema Fracture
    python evaluate.py --compare RUN_A RUN_B
    PIPELINE_OPTIONS="--data_dir data/demo --epochs 3" python train.py --run_name demo

How a command line reads:
- `--field value` or `--field=value`, converted by the field's type: a bool takes true or false
  (1/0, yes/no, on/off), an optional field also none, a Literal field one of its values.
- A scalar option takes exactly the next token, which may start with one '-' (`--num_workers -1`).
- A tuple field takes every following token up to the next one starting with `--`
  (`--compare RUN_A RUN_B`); `--field=value` gives it one token. Each token is also split on
  commas (`--gradcam Cardiomegaly,Edema`), except for fields whose items may hold commas (marked
  with config.WHOLE_ITEMS: predict.py's inputs, ablate.py's configurations).
- The tokens before the first option are the script's positional field (config.POSITIONAL:
  predict.py's inputs); every other script refuses them.
- A script takes only the fields it reads (config.ACCEPTS); any other is an error that names the
  scripts that read it (config.READ_BY). Of an option given twice, the later wins.

Options shared by a chain of stages go in the environment variable PIPELINE_OPTIONS (same syntax;
the Makefile sets it on each command of `make demo` and `make pipeline`). Each script takes from
it the fields it reads and ignores the others; a field name that does not exist, or a value of
the wrong type, is still an error. The command line is strict and overrides it. Fields from both
count as given (given_fields: train.py's resume check and dataset.check_data_options use them).
Only the pipeline's scripts (config.READS) read it; make_demo_data.py's own options do not.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import os
import shlex
import sys
import textwrap
import types
import typing

from config import validate  # FIXME layering
from config import ACCEPTS, POSITIONAL, READ_BY, READS, Config, literal_values, not_one_of
from cxr.errors import ConfigError, PipelineError

PIPELINE_ENV = "PIPELINE_OPTIONS"  # options shared by a chain of stages, see above

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}

Options = dict[str, list[str]]  # field name -> its value tokens, as given


# ---- one value ---------------------------------------------------------------------------------

def _convert(name: str, text: str, field_type: typing.Any):
    """Convert one command-line string to a (non-tuple) field type: bool, int, float, str, a
    Literal, Optional[...]."""
    allowed = literal_values(field_type)
    if allowed:
        for value in allowed:
            if str(value) == text:
                return value
        raise ConfigError(not_one_of(name, text, allowed))
    if typing.get_origin(field_type) in (typing.Union, types.UnionType):
        inner = [t for t in typing.get_args(field_type) if t is not type(None)]
        if text.lower() in {"none", "null", ""}:
            return None
        return _convert(name, text, inner[0])
    if field_type is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ConfigError(f"--{name} expects true or false, got {text!r}")
    try:
        return field_type(text)
    except ValueError:
        raise ConfigError(f"--{name} expects {field_type.__name__}, got {text!r}") from None


def _is_tuple(hint) -> bool:
    return typing.get_origin(hint) is tuple


def _value(field: dataclasses.Field, hint, tokens: list[str]):
    """A field's value from its tokens: one for a scalar; items (split on commas unless the
    field keeps whole items) for a tuple."""
    if not _is_tuple(hint):
        return _convert(field.name, tokens[0], hint)
    if field.metadata.get("split_commas", True):
        items = [item.strip() for token in tokens for item in token.split(",")]
    else:
        items = list(tokens)
    item_type = typing.get_args(hint)[0]
    return tuple(_convert(field.name, item, item_type) for item in items if item)


# ---- tokens into options -----------------------------------------------------------------------

def _split(argv: list[str], cls: type, script: str | None) -> list[tuple[str, list[str]]]:
    """[(field, its tokens)] in command-line order; leading tokens as the positional field."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    positional = POSITIONAL.get(script) if cls is Config else None
    leading = list(itertools.takewhile(lambda arg: not arg.startswith("--"), argv))
    pairs = []
    if leading and positional is None:
        raise ConfigError(f"unexpected argument {leading[0]!r}: options look like --field value"
                          + (f" ({script} takes options only)" if script else ""))
    if leading:
        pairs.append((positional, leading))
    i = len(leading)
    while i < len(argv):
        name, has_value, value = argv[i][2:].partition("=")
        if name not in fields:
            valid = sorted(ACCEPTS[script] if cls is Config and script else fields)
            raise ConfigError(f"unknown option --{name}. Valid options: {', '.join(valid)}")
        if has_value:
            tokens = [value]
        elif _is_tuple(hints[name]):
            tokens = list(itertools.takewhile(lambda arg: not arg.startswith("--"),
                                              argv[i + 1:]))
        else:
            tokens = argv[i + 1:i + 2]
            if tokens and tokens[0].startswith("--"):
                tokens = []
        if not tokens:
            raise ConfigError(f"--{name} needs a value")
        i += 1 + (0 if has_value else len(tokens))
        if i < len(argv) and not argv[i].startswith("--"):
            where = f"; {script}'s {positional} go before the first option" if positional else ""
            raise ConfigError(f"unexpected argument {argv[i]!r} after --{name}: options look "
                              f"like --field value{where}")
        if leading and name == positional:
            raise ConfigError(f"give the {positional} before the options or with --{positional}, "
                              "not both")
        pairs.append((name, tokens))
    return pairs


def _environment(script: str) -> Options:
    """The PIPELINE_OPTIONS fields `script` reads (every one is checked, the others dropped)."""
    text = os.environ.get(PIPELINE_ENV, "")
    try:
        pairs = _split(shlex.split(text), Config, None)
        _convert_all(Config, pairs)  # a bad value fails in the first stage, not the one reading it
    except ValueError as err:  # ConfigError, or shlex's unbalanced quotes
        raise ConfigError(f"{PIPELINE_ENV}: {err}") from None
    return {name: tokens for name, tokens in pairs if name in ACCEPTS[script]}


def _convert_all(cls: type, pairs) -> dict:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    return {name: _value(fields[name], hints[name], tokens) for name, tokens in pairs}


def command_line_options(argv: list[str], script: str | None = None, cls: type = Config
                         ) -> Options:
    """The options of argv alone, by field; each must be one `script` reads. With script None
    (or another dataclass than Config) every field is allowed."""
    checked = cls is Config and script is not None
    if checked and script not in READS:
        raise ValueError(f"{script} is not a script of config.READS")
    options = {}
    for name, tokens in _split(argv, cls, script):
        if checked and name not in ACCEPTS[script]:
            raise ConfigError(f"--{name} is read by {', '.join(READ_BY[name])}, not by {script}")
        options[name] = tokens
    return options


def given_options(argv: list[str], script: str | None = None, cls: type = Config) -> Options:
    """The options a script was given, by field: those of PIPELINE_OPTIONS it reads, then the
    command line's (command_line_options), which override them. With script None (or another
    dataclass than Config) the environment is not read."""
    shared = _environment(script) if cls is Config and script is not None else {}
    return {**shared, **command_line_options(argv, script, cls)}


def given_fields(argv: list[str], script: str | None = None) -> set[str]:
    """The fields set explicitly, on the command line or through PIPELINE_OPTIONS (train.py's
    --resume and dataset.check_data_options check them)."""
    return set(given_options(argv, script))


def option_tokens(options: Options) -> list[str]:
    """Options back into command-line tokens (ablate.py passes them on to its stages)."""
    argv = []
    for name, tokens in options.items():
        if len(tokens) == 1 and tokens[0].startswith("--"):
            argv.append(f"--{name}={tokens[0]}")
        else:
            argv += [f"--{name}", *tokens]
    return argv


# ---- options into a config -----------------------------------------------------------------------

def apply_options(cfg, options: Options):
    """cfg with the given options converted by field type (any dataclass instance)."""
    return dataclasses.replace(cfg, **_convert_all(type(cfg), options.items()))


def apply_overrides(cfg, argv: list[str], script: str | None = None):
    """cfg (any dataclass instance) with the `--field value` options of argv only (not
    PIPELINE_OPTIONS); with a script, only the fields it reads are allowed."""
    return apply_options(cfg, command_line_options(argv, script, type(cfg)))


def parse_args(argv: list[str] | None = None, script: str | None = None, defaults=None):
    """The shared entry point of every script: defaults, PIPELINE_OPTIONS, the command line.

    `defaults` is a Config unless a script brings its own dataclass (make_demo_data.py does).
    """
    argv = sys.argv[1:] if argv is None else argv
    defaults = Config() if defaults is None else defaults
    if "-h" in argv or "--help" in argv:
        print(describe(defaults, script))
        raise SystemExit(0)
    cfg = apply_options(defaults, given_options(argv, script, type(defaults)))
    return validate(cfg) if isinstance(cfg, Config) else cfg


def run_cli(main, script: str, argv: list[str] | None = None, defaults=None) -> None:
    """Run a script's main(cfg), turning expected user errors into one clear line and exit 2.

    `script` is the script's file name ("train.py"): it takes the fields config.READS gives it.
    """
    try:
        main(parse_args(argv, script, defaults))
    except (ConfigError, PipelineError) as err:
        print(f"error: {_without_worker_traceback(str(err))}", file=sys.stderr)
        raise SystemExit(2) from None


def _without_worker_traceback(message: str) -> str:
    """A DataLoader worker's error arrives wrapped in its traceback: keep only its own message."""
    if "Original Traceback" not in message:
        return message
    last_line = message.strip().splitlines()[-1]  # "module.ErrorClass: the message"
    return last_line.split(": ", 1)[-1]


# ---- --help --------------------------------------------------------------------------------------

def describe(cfg, script: str | None = None) -> str:
    """The --help text: each field the script reads, its type or allowed values, its default and
    the comment beside it in the dataclass."""
    hints = typing.get_type_hints(type(cfg))
    comments = field_comments(type(cfg))
    checked = isinstance(cfg, Config) and script is not None
    positional = POSITIONAL.get(script) if checked else None
    usage = f"python {script or 'SCRIPT'}" + (f" [{positional.upper()} ...]" if positional else "")
    lines = [f"usage: {usage} [--field value ...]   (or --field=value)", ""]
    if positional:
        lines.append(f"{positional.upper()}: the values before the first option "
                     f"(or --{positional})")
    lines.append("Options, with their types or allowed values and defaults:")
    for f in dataclasses.fields(cfg):
        if checked and f.name not in ACCEPTS[script]:
            continue
        lines.append(f"  --{f.name} {kind_text(hints[f.name])} = {getattr(cfg, f.name)!r}")
        if comments.get(f.name):
            lines.append(textwrap.fill(comments[f.name], 100, initial_indent=" " * 8,
                                       subsequent_indent=" " * 8))
    if checked:
        lines += ["", textwrap.fill(f"{PIPELINE_ENV} (environment): options shared by a chain "
                                    f"of stages; {script} takes those it reads, the command "
                                    "line overrides them.", 100)]
    return "\n".join(lines)


def kind_text(hint) -> str:
    """'{auto, cpu}' for a Literal, 'str ...' for a tuple, 'int | none', 'true|false', 'float'."""
    allowed = literal_values(hint)
    if allowed:
        return "{" + ", ".join(map(str, allowed)) + "}"
    if _is_tuple(hint):
        return f"{kind_text(typing.get_args(hint)[0])} ..."
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = [t for t in typing.get_args(hint) if t is not type(None)]
        return f"{kind_text(inner[0])} | none"
    return "true|false" if hint is bool else getattr(hint, "__name__", str(hint))


def field_comments(cls: type) -> dict[str, str]:
    """Each field's comment in the class source: the one on its line, else the comment lines
    just above it; comment lines under a field that has its own continue that one."""
    try:
        source = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    names = {f.name for f in dataclasses.fields(cls)}
    comments: dict[str, str] = {}
    pending: list[str] = []
    previous = None  # the field above, when it had a comment on its own line

    def flush_to_previous() -> None:
        if pending and previous:
            comments[previous] += " " + " ".join(pending)
        pending.clear()

    for line in source:
        text = line.strip()
        if text.startswith("# ----") or not text:
            flush_to_previous()
            previous = None
        elif text.startswith("#"):
            pending.append(text.lstrip("# "))
        elif text.split(":", 1)[0] in names:
            name = text.split(":", 1)[0]
            _, hash_, trailing = text.partition("  # ")
            if hash_:
                flush_to_previous()
                comments[name], previous = trailing.strip(), name
            else:
                comments[name], previous = " ".join(pending), None
                pending.clear()
        else:
            flush_to_previous()
            previous = None
    return comments
