"""The command line of every script: overrides of a config dataclass's fields, by their types.

Every function takes the class (or a default instance) from the script: the fields' own
declarations (cxr/settings.py) say which script reads which, so nothing here names config.py.

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
  commas (`--gradcam Cardiomegaly,Edema`), except for fields whose items may hold commas
  (declared whole_items: predict.py's inputs, ablate.py's configurations).
- The tokens before the first option are the script's positional field (declared positional:
  predict.py's inputs); every other script refuses them.
- A script takes only the fields it accepts (settings.accepts); any other is an error that names
  the scripts that read it (settings.read_by). Of an option given twice, the later wins.
- A token `@FILE` stands for the options written in FILE (a recipe such as configs/demo.options):
  whitespace-separated tokens, as a shell splits them, "#" to the end of a line a comment.

Options shared by a chain of stages go in the environment variable PIPELINE_OPTIONS (same syntax;
the Makefile sets it on each command of `make demo` and `make pipeline`). Each script takes from
it the fields it reads and ignores the others; a field name that does not exist, or a value of
the wrong type, is still an error. The command line is strict and overrides it. Fields from both
count as given (given_fields: train.py's resume check and dataset.check_data_options use them).
Only the pipeline's scripts (the class's SCRIPTS) read it; make_demo_data.py's own options do
not: a class without SCRIPTS takes any of its fields and no environment.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import os
import shlex
import sys
import textwrap
import types
import typing

from cxr.errors import ConfigError, PipelineError
from cxr.settings import Setting, accepts, literal_values, not_one_of, positional_fields, read_by, \
    scripts, setting_of

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
    if not setting_of(field).whole_items:
        items = [item.strip() for token in tokens for item in token.split(",")]
    else:
        items = list(tokens)
    item_type = typing.get_args(hint)[0]
    return tuple(_convert(field.name, item, item_type) for item in items if item)


# ---- tokens into options -----------------------------------------------------------------------

def _checked(cls: type, script: str | None) -> bool:
    """Whether `script` takes only the fields it accepts: a class that lists its SCRIPTS."""
    return script is not None and bool(scripts(cls))


def _expand_files(argv: list[str]) -> list[str]:
    """argv with each `@FILE` token replaced by the options FILE holds (see above)."""
    expanded = []
    for token in argv:
        if not token.startswith("@"):
            expanded.append(token)
            continue
        path = token[1:]
        try:
            text = open(path, encoding="utf-8").read()
        except OSError as err:
            raise ConfigError(f"{token}: cannot read the options file {path} ({err.strerror})") \
                from None
        try:
            expanded += shlex.split(text, comments=True)
        except ValueError as err:  # unbalanced quotes
            raise ConfigError(f"{path}: {err}") from None
    return expanded


def _split(argv: list[str], cls: type, script: str | None) -> list[tuple[str, list[str]]]:
    """[(field, its tokens)] in command-line order; leading tokens as the positional field."""
    argv = _expand_files(argv)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    positional = positional_fields(cls).get(script)
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
            valid = sorted(accepts(cls)[script] if _checked(cls, script) else fields)
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


def _environment(script: str, cls: type) -> Options:
    """The PIPELINE_OPTIONS fields `script` reads (every one is checked, the others dropped)."""
    text = os.environ.get(PIPELINE_ENV, "")
    try:
        pairs = _split(shlex.split(text), cls, None)
        _convert_all(cls, pairs)  # a bad value fails in the first stage, not the one reading it
    except ValueError as err:  # ConfigError, or shlex's unbalanced quotes
        raise ConfigError(f"{PIPELINE_ENV}: {err}") from None
    return {name: tokens for name, tokens in pairs if name in accepts(cls)[script]}


def _convert_all(cls: type, pairs) -> dict:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    return {name: _value(fields[name], hints[name], tokens) for name, tokens in pairs}


def command_line_options(argv: list[str], script: str | None, cls: type) -> Options:
    """The options of argv alone, by field of the dataclass `cls`; each must be one `script`
    accepts. With script None (or a class without SCRIPTS) every field is allowed."""
    checked = _checked(cls, script)
    if checked and script not in scripts(cls):
        raise ValueError(f"{script} is not one of {cls.__name__}.SCRIPTS")
    accepted = accepts(cls)[script] if checked else None
    options = {}
    for name, tokens in _split(argv, cls, script):
        if accepted is not None and name not in accepted:
            readers = ", ".join(read_by(cls)[name])
            raise ConfigError(f"--{name} is read by {readers}, not by {script}")
        options[name] = tokens
    return options


def given_options(argv: list[str], script: str | None, cls: type) -> Options:
    """The options a script was given, by field: those of PIPELINE_OPTIONS it reads, then the
    command line's (command_line_options), which override them. With script None (or a class
    without SCRIPTS) the environment is not read."""
    shared = _environment(script, cls) if _checked(cls, script) else {}
    return {**shared, **command_line_options(argv, script, cls)}


def given_fields(argv: list[str], script: str | None, cls: type) -> set[str]:
    """The fields set explicitly, on the command line or through PIPELINE_OPTIONS (train.py's
    --resume and dataset.check_data_options check them)."""
    return set(given_options(argv, script, cls))


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


def parse_args(argv: list[str] | None = None, script: str | None = None, *, defaults):
    """The shared entry point of every script: defaults, PIPELINE_OPTIONS, the command line.

    `defaults` is an instance of the script's dataclass (`Config()`; make_demo_data.py brings
    its own). The result is checked by its `validate()` method when the class has one: once,
    after every option is applied.
    """
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        print(describe(defaults, script))
        raise SystemExit(0)
    cfg = apply_options(defaults, given_options(argv, script, type(defaults)))
    return cfg.validate() if hasattr(cfg, "validate") else cfg


def run_cli(main, script: str, argv: list[str] | None = None, *, defaults) -> None:
    """Run a script's main(cfg), turning expected user errors into one clear line and exit 2.

    `script` is the script's file name ("train.py"): it takes the fields declared read by it.
    """
    try:
        main(parse_args(argv, script, defaults=defaults))
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
    checked = _checked(type(cfg), script)
    positional = positional_fields(type(cfg)).get(script) if checked else None
    usage = f"python {script or 'SCRIPT'}" + (f" [{positional.upper()} ...]" if positional else "")
    lines = [f"usage: {usage} [--field value ...]   (or --field=value)", ""]
    if positional:
        lines.append(f"{positional.upper()}: the values before the first option "
                     f"(or --{positional})")
    lines.append("Options, with their types or allowed values and defaults:")
    accepted = accepts(type(cfg))[script] if checked else None
    for f in dataclasses.fields(cfg):
        if accepted is not None and f.name not in accepted:
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
    """Each field's comment in the class source (field_docs)."""
    return {name: doc.comment for name, doc in field_docs(cls).items()}


@dataclasses.dataclass(frozen=True)
class FieldDoc:
    section: str  # the title of the `# ---- title ----` line above the field; "" before any
    comment: str  # its documentation: the comment on its declaration, else the lines above it


def field_docs(cls: type) -> dict[str, FieldDoc]:
    """Each field's section and comment in the class source: the comment on its declaration
    (which may span lines), else the comment lines just above it; comment lines under a field
    that has its own continue that one."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    spans = _declarations(source, {f.name for f in dataclasses.fields(cls)})
    docs: dict[str, FieldDoc] = {}
    section, pending = "", []
    previous = None  # the field above, when it had a comment on its own declaration

    def flush_to_previous() -> None:
        if pending and previous:
            more = f"{docs[previous].comment} {' '.join(pending)}"
            docs[previous] = dataclasses.replace(docs[previous], comment=more)
        pending.clear()

    i = 0
    while i < len(lines):
        text = lines[i].strip()
        if i in spans:
            name, last = spans[i]
            trailing = " ".join(line.partition("  # ")[2].strip() for line in lines[i:last + 1]
                                if "  # " in line)
            if trailing:
                flush_to_previous()
                docs[name], previous = FieldDoc(section, trailing), name
            else:
                docs[name], previous = FieldDoc(section, " ".join(pending)), None
                pending.clear()
            i = last + 1
            continue
        if text.startswith("#") and not text.startswith("# ----"):
            pending.append(text.lstrip("# "))
        else:  # a section line, a blank line or other code ends a field's comment
            flush_to_previous()
            previous = None
            if text.startswith("# ----"):
                section = text.strip("#- ")
        i += 1
    return docs


def _declarations(source: str, names: set[str]) -> dict[int, tuple[str, int]]:
    """First line (0-based) of each field's declaration in a class's source -> (the field, its
    last line)."""
    body = ast.parse(source).body[0].body
    return {node.lineno - 1: (node.target.id, node.end_lineno - 1) for node in body
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
            and node.target.id in names}


# ---- the configuration reference (docs/config.md) ------------------------------------------------

def config_reference(cls: type) -> str:
    """A Markdown reference of a config dataclass, generated from its source: its module's
    docstring, then a table per section of each field's type or allowed values, default,
    readers, declared facts and comment (docs/config.md; `make docs` writes it). Every field
    needs a default."""
    docs, defaults = field_docs(cls), cls()
    hints, readers, taken = typing.get_type_hints(cls), read_by(cls), accepts(cls)
    lines = [f"# Configuration reference: `{cls.__module__}.py`", "",
             f"Every field of `{cls.__module__}.py`, as `--help` describes it (`make docs` writes "
             "this page from the fields' declarations).", "",
             inspect.cleandoc(sys.modules[cls.__module__].__doc__ or ""), "", _REFERENCE_LEGEND]
    section = None
    for f in dataclasses.fields(cls):
        doc = docs.get(f.name, FieldDoc("", ""))
        if doc.section != section:
            section = doc.section
            lines += ["", f"## {section or 'Fields'}", "",
                      "| field | type | default | read by | facts | meaning |",
                      "| --- | --- | --- | --- | --- | --- |"]
        checkers = [script for script, names in taken.items()
                    if f.name in names and script not in readers[f.name]]
        lines.append(_table_row([f"`{f.name}`", f"`{kind_text(hints[f.name])}`",
                                 f"`{getattr(defaults, f.name)!r}`", ", ".join(readers[f.name]),
                                 "; ".join(_facts_text(setting_of(f), checkers)), doc.comment]))
    return "\n".join(lines) + "\n"


_REFERENCE_LEGEND = textwrap.fill(
    "Each field is an option of the scripts that read it (`--field value`; `python SCRIPT "
    "--help` lists a script's). The columns: its type or allowed values; its default; the "
    "scripts that read it (a script that runs others reads their fields too); its declared "
    "facts: built into the data by a script (the scripts that check the data take it too, and "
    "refuse a value the data were not built with), fixed on resume (a resumed run keeps its "
    "checkpoint's value), the same for every member of an ensemble, whole items (not split on "
    "commas), positional (the tokens before the first option); and its comment.", 100)


def _facts_text(facts: Setting, checkers: list[str]) -> list[str]:
    """A field's declared facts in words; `checkers`: the scripts that take a data field only to
    check it."""
    words = []
    if facts.data:
        words.append(f"built into the data by {facts.data}"
                     + (f" (checked by {', '.join(checkers)})" if checkers else ""))
    if facts.fixed_on_resume:
        words.append("fixed on resume")
    if facts.same_for_members:
        words.append("the same for ensemble members")
    if facts.whole_items:
        words.append("whole items")
    if facts.positional:
        words.append(f"positional in {facts.positional}")
    return words


def _table_row(cells: list[str]) -> str:
    """A Markdown table row; a cell's | and < escaped (a table cell, an HTML tag)."""
    return "| " + " | ".join(cell.replace("|", "\\|").replace("<", "\\<") for cell in cells) \
        + " |"
