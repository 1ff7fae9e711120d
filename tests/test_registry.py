"""Models, methods and loss weightings are chosen by name through the one `Registry`: the same
unknown-name error (naming the kind and the known names), the same refusal of a second registration."""

from __future__ import annotations

import pytest

from mas_flower.methods.base import METHODS
from mas_flower.models.registry import MODELS
from mas_flower.registry import Registry
from mas_flower.weighting.base import WEIGHTINGS

KINDS = [(MODELS, "model", "tiny"), (METHODS, "method", "fedavg"), (WEIGHTINGS, "weighting", "equal")]


@pytest.mark.parametrize(("registry", "kind", "known"), KINDS)
def test_the_three_kinds_share_the_registry(registry: Registry, kind: str, known: str) -> None:
    assert isinstance(registry, Registry) and registry.kind == kind
    assert known in registry.names() and registry.names() == sorted(registry.names())
    with pytest.raises(ValueError, match=rf"^unknown {kind} 'nope'; known: .*\b{known}\b"):
        registry.get("nope")
    with pytest.raises(ValueError, match=rf"^{kind} '{known}' registered twice$"):
        registry.add(known, registry.get(known))
    assert known in registry.names()


def test_register_names_the_class_and_refuses_a_second_one() -> None:
    things: Registry[type] = Registry("thing")

    @things.register("a")
    class A:
        pass

    assert things.get("a") is A and A.name == "a"  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="thing 'a' registered twice"):
        things.register("a")(type("B", (), {}))
    assert things.get("a") is A
