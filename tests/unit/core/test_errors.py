"""Unit tests of the project's exception hierarchy (core/errors.py)."""

from __future__ import annotations

import inspect
import re

import pytest

import sa01.core.errors as errors
from sa01.core.errors import ResilienceError, ServiceUnavailableError, TransientError

NAME = re.compile(r"[A-Z][A-Za-z]*Error")


def documented_tree() -> dict[str, str]:
    """Parent of each class, as drawn in the module docstring (root -> 'Exception')."""
    doc = errors.__doc__ or ""
    lines = doc.split("::", 1)[1].splitlines()
    parents: dict[str, str] = {}
    stack: list[tuple[int, str]] = []  # (column of the name, name)
    for line in lines:
        match = NAME.search(line)
        if match is None or not re.match(r"^[\s│├└─]*$", line[: match.start()]):
            continue
        column, name = match.start(), match.group()
        while stack and stack[-1][0] >= column:
            stack.pop()
        parents[name] = stack[-1][1] if stack else "Exception"
        stack.append((column, name))
    return parents


def defined_exception_classes() -> dict[str, type[BaseException]]:
    return {
        name: value
        for name, value in vars(errors).items()
        if inspect.isclass(value)
        and issubclass(value, BaseException)
        and value.__module__ == errors.__name__
    }


def test_docstring_tree_is_parsed() -> None:
    tree = documented_tree()
    # A sanity check of the parser itself on a few known edges.
    assert tree["ResilienceError"] == "Exception"
    assert tree["InfrastructureUnavailableError"] == "ServiceUnavailableError"
    assert tree["MessageDecodeError"] == "PermanentError"
    assert len(tree) == 18


def test_docstring_tree_lists_every_class() -> None:
    assert set(documented_tree()) == set(defined_exception_classes())


@pytest.mark.parametrize("name", sorted(documented_tree()))
def test_class_base_matches_docstring_tree(name: str) -> None:
    cls = getattr(errors, name)
    parent_name = documented_tree()[name]
    parent = Exception if parent_name == "Exception" else getattr(errors, parent_name)
    assert cls.__bases__ == (parent,)


@pytest.mark.parametrize("name", sorted(defined_exception_classes()))
def test_every_class_has_a_one_line_docstring(name: str) -> None:
    cls = getattr(errors, name)
    doc = cls.__dict__.get("__doc__")
    assert isinstance(doc, str)
    assert doc.strip()
    assert "\n" not in doc.strip()


def test_every_name_in_all_exists() -> None:
    missing = [name for name in errors.__all__ if not hasattr(errors, name)]
    assert missing == []


def test_every_exception_class_is_in_all() -> None:
    assert set(defined_exception_classes()) - set(errors.__all__) == set()


def test_every_class_derives_from_resilience_error() -> None:
    for cls in defined_exception_classes().values():
        assert issubclass(cls, ResilienceError)


def test_service_unavailable_message_and_attributes() -> None:
    error = ServiceUnavailableError("kafka", "x")
    assert str(error) == "kafka is not available: x"
    assert error.service == "kafka"
    assert error.detail == "x"
    assert error.args == ("kafka is not available: x",)
    assert isinstance(error, TransientError)


def test_infrastructure_unavailable_keeps_service_attributes() -> None:
    error = errors.InfrastructureUnavailableError("postgresql", "connection refused")
    assert str(error) == "postgresql is not available: connection refused"
    assert error.service == "postgresql"
    assert isinstance(error, ServiceUnavailableError)


def test_circuit_open_message_and_name() -> None:
    error = errors.CircuitOpenError("openai")
    assert str(error) == "circuit 'openai' is open"
    assert error.name == "openai"
