"""The public API as the docs site renders it (mkdocstrings: Google style, parsed by griffe).

Every name of `rsojax.__all__` and `rsojax.experiment.__all__` exists and has a docstring;
each function, class and public method among them documents every parameter it takes: a
function's and a method's in `Args:`, a class's constructor arguments in `Args:` or
`Attributes:` (a config field may carry its help in the field's metadata instead, where the
command lines read it); and each docstring parses without a warning from griffe.
"""

import dataclasses
import inspect
import logging

import flax.linen as nn
import griffe
import pytest
from conftest import ROOT

import rsojax
import rsojax.experiment

PACKAGES = {"rsojax": rsojax, "rsojax.experiment": rsojax.experiment}
EXPORTED = [f"{package}.{name}" for package, module in PACKAGES.items() for name in module.__all__]
DOCUMENTED = {griffe.DocstringSectionKind.parameters, griffe.DocstringSectionKind.other_parameters}
ATTRIBUTES = {griffe.DocstringSectionKind.attributes}


@pytest.fixture(scope="module")
def api():
    return griffe.load("rsojax", search_paths=[ROOT], resolve_aliases=True, resolve_external=False)


def runtime(path: str):
    package, name = path.rsplit(".", 1)
    return getattr(PACKAGES[package], name)


def static(api, path: str):
    obj = api[path.removeprefix("rsojax.")] if path != "rsojax" else api
    return obj.final_target if obj.is_alias else obj


class Warnings(logging.Handler):
    """Collects what griffe's logger warns while a docstring is parsed."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def parsed(obj) -> tuple[list, list[str]]:
    """The docstring's sections, as the docs site parses them, and griffe's warnings."""
    handler, logger = Warnings(), logging.getLogger("griffe")
    logger.addHandler(handler)
    try:
        sections = obj.docstring.parse("google", warn_missing_types=False)
    finally:
        logger.removeHandler(handler)
    return sections, handler.messages


def documented(sections, kinds) -> set[str]:
    return {item.name.lstrip("*") for s in sections if s.kind in kinds for item in s.value}


def parameters(fn) -> list[str]:
    """The names a caller passes (not self or cls)."""
    names = [p.name for p in inspect.signature(fn).parameters.values()]
    return [n for n in names if n not in ("self", "cls")]


def constructor_arguments(cls) -> list[str]:
    """What the class is made from: its fields (dataclasses, NamedTuples, flax modules but
    their `parent` and `name`) or its `__init__`'s parameters."""
    if issubclass(cls, BaseException) or getattr(cls, "_is_protocol", False):
        return []
    names = parameters(cls)
    if issubclass(cls, nn.Module):
        names = [n for n in names if n not in ("parent", "name")]
    if dataclasses.is_dataclass(cls):  # a field with its own help is documented there
        helped = {f.name for f in dataclasses.fields(cls) if f.metadata.get("help")}
        names = [n for n in names if n not in helped]
    return [n for n in names if n not in ("args", "kwargs")]


def public_methods(cls) -> list[str]:
    """The methods and properties the class itself defines (not inherited), not private."""
    return [
        name
        for name, member in vars(cls).items()
        if not name.startswith("_") and isinstance(member, property | classmethod | staticmethod | type(runtime))
    ]


def problems(api, path: str) -> list[str]:
    """What keeps `path`'s docs from saying what it takes: a missing docstring, griffe's
    warnings, parameters without an entry."""
    obj, found = runtime(path), static(api, path)
    if not found.docstring:
        return [f"{path}: no docstring"]
    sections, warnings = parsed(found)
    out = [f"{path}: {w}" for w in warnings]
    if inspect.isclass(obj):
        named = documented(sections, DOCUMENTED | ATTRIBUTES)
        out += [f"{path}: argument {n!r} has no Args or Attributes entry" for n in constructor_arguments(obj) if n not in named]
        for name in public_methods(obj):
            method = found.members.get(name)
            if method is None:  # added by a decorator (flax.struct's `replace`), not in the source
                continue
            if not method.docstring:
                out.append(f"{path}.{name}: no docstring")
                continue
            sections, warnings = parsed(method)
            out += [f"{path}.{name}: {w}" for w in warnings]
            member = vars(obj)[name]
            if not isinstance(member, property):
                fn = member.__func__ if isinstance(member, classmethod | staticmethod) else member
                named = documented(sections, DOCUMENTED)
                out += [f"{path}.{name}: parameter {n!r} has no Args entry" for n in parameters(fn) if n not in named]
    elif callable(obj):
        named = documented(sections, DOCUMENTED)
        out += [f"{path}: parameter {n!r} has no Args entry" for n in parameters(obj) if n not in named]
    return out


@pytest.mark.parametrize("path", EXPORTED)
def test_exported_name_documents_what_it_takes(api, path):
    assert not problems(api, path)


def test_a_missing_args_entry_is_found(api, tmp_path):
    """The check itself: a function whose Args leave out a parameter, and one with an entry
    for a parameter it does not have (griffe's warning), are both reported."""
    (tmp_path / "demo.py").write_text(
        'def f(a: int, b: int) -> int:\n    """Adds.\n\n    Args:\n      a: one.\n\n    Returns:\n      a + b.\n    """\n'
        'def g(a: int) -> int:\n    """Adds.\n\n    Args:\n      a: one.\n      c: none.\n    """\n'
    )
    demo = griffe.load("demo", search_paths=[str(tmp_path)])
    sections, warnings = parsed(demo["f"])
    assert documented(sections, DOCUMENTED) == {"a"} and not warnings
    _, warnings = parsed(demo["g"])
    assert any("'c'" in w for w in warnings), warnings
