"""What each field of a configuration dataclass declares of itself, and the tables derived from it.

A field is declared with `setting`: its default, the scripts that read it and what else the
pipeline must know of it. Every table (which script reads which field, what a script's command
line accepts, what a resumed run keeps...) is computed here from those declarations, given the
class, so that adding a field is one edit where it is declared:

    # label smoothing of the positive targets; 0 = off
    label_smoothing: float = setting(0.0, "train.py", fixed_on_resume=True)

Facts about the scripts themselves are class attributes: SCRIPTS (every script, in pipeline
order), STAGES (a script that runs others takes their fields too) and CHECKS_DATA (scripts that
take the data-building fields to check them against the data). A class that declares no SCRIPTS
(make_demo_data.py's own) has no tables: every field is allowed everywhere.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Literal

_KEY = "setting"  # the field metadata key `setting` stores its facts under


@dataclass(frozen=True)
class Setting:
    """The facts a field declares (its metadata), beside its type, default and comment."""
    read_by: tuple[str, ...] = ()  # the scripts whose code path reads it (cfg.<field>)
    data: str | None = None  # built into the data by this script: checked against them after
    fixed_on_resume: bool = False  # a resumed run must keep its checkpoint's value
    same_for_members: bool = False  # every member of an ensemble must have the same value
    whole_items: bool = False  # a tuple whose items may hold commas: never split on them
    positional: str | None = None  # this script's tokens before its first --option fill it


def setting(default: Any, *read_by: str, data: str | None = None, fixed_on_resume: bool = False,
            same_for_members: bool = False, whole_items: bool = False,
            positional: str | None = None) -> Any:
    """A dataclass field with its facts (Setting); the scripts named by `data` and `positional`
    read it too."""
    readers = (*read_by, *(s for s in (data, positional) if s and s not in read_by))
    facts = Setting(readers, data, fixed_on_resume, same_for_members, whole_items, positional)
    return dataclasses.field(default=default, metadata={_KEY: facts})


def setting_of(field: dataclasses.Field) -> Setting:
    """A field's facts; none for a field declared without `setting`."""
    return field.metadata.get(_KEY, Setting())


def settings(cls: type) -> dict[str, Setting]:
    """Each field's facts by name, in declaration order."""
    return {f.name: setting_of(f) for f in dataclasses.fields(cls)}


# ---- facts about the scripts (class attributes) -------------------------------------------------

def scripts(cls: type) -> tuple[str, ...]:
    """The scripts that read the class's fields, in pipeline order; () for a class without."""
    return tuple(getattr(cls, "SCRIPTS", ()))


def stages(cls: type) -> dict[str, tuple[str, ...]]:
    """A script that runs others -> those it runs (it takes their fields too)."""
    return dict(getattr(cls, "STAGES", {}))


def checks_data(cls: type) -> tuple[str, ...]:
    """The scripts that take the data-building fields to check them against the data."""
    return tuple(getattr(cls, "CHECKS_DATA", ()))


# ---- the derived tables --------------------------------------------------------------------------

def reads_by_script(cls: type) -> dict[str, tuple[str, ...]]:
    """Which script reads which field: each of the class's scripts -> its fields, in declaration
    order. A field naming a script the class does not list is an error (a typo)."""
    facts = settings(cls)
    unknown = sorted({s for f in facts.values() for s in f.read_by} - set(scripts(cls)))
    if unknown:
        raise ValueError(f"{cls.__name__}'s fields name {', '.join(unknown)}, not one of its "
                         f"SCRIPTS ({', '.join(scripts(cls))})")
    return {script: tuple(name for name, f in facts.items() if script in f.read_by)
            for script in scripts(cls)}


def data_fields(cls: type) -> dict[str, str]:
    """The fields built into the data -> the script that builds them in."""
    return {name: f.data for name, f in settings(cls).items() if f.data}


def fixed_on_resume(cls: type) -> tuple[str, ...]:
    """The fields a resumed run must share with its checkpoint."""
    return tuple(name for name, f in settings(cls).items() if f.fixed_on_resume)


def same_for_members(cls: type) -> tuple[str, ...]:
    """The fields every member of an ensemble must share."""
    return tuple(name for name, f in settings(cls).items() if f.same_for_members)


def positional_fields(cls: type) -> dict[str, str]:
    """A script -> the field that takes its tokens before the first --option."""
    return {f.positional: name for name, f in settings(cls).items() if f.positional}


def accepts(cls: type) -> dict[str, frozenset[str]]:
    """What each script's command line accepts: the fields it reads, the data-building fields
    when it checks them, and all its stages accept."""
    reads, data, runs = reads_by_script(cls), set(data_fields(cls)), stages(cls)

    def accepted(script: str) -> frozenset[str]:
        own = set(reads[script]) | (data if script in checks_data(cls) else set())
        return frozenset(own.union(*(accepted(stage) for stage in runs.get(script, ()))))

    return {script: accepted(script) for script in reads}


def read_by(cls: type) -> dict[str, tuple[str, ...]]:
    """Who reads each field, in pipeline order: a script that reads it, or runs one that does."""
    reads, runs = reads_by_script(cls), stages(cls)
    return {name: tuple(script for script in reads
                        if name in reads[script]
                        or any(name in reads[stage] for stage in runs.get(script, ())))
            for name in settings(cls)}


# ---- allowed values ------------------------------------------------------------------------------

def literal_values(hint) -> tuple:
    """The allowed values of a Literal type (an alias such as UncertaintyPolicy too); () else."""
    return typing.get_args(hint) if typing.get_origin(hint) is Literal else ()


def not_one_of(name: str, value, allowed: tuple) -> str:
    return f"--{name} {value!r} is not one of {', '.join(map(str, allowed))}"
