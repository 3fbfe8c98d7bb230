"""The decoder's rules are written once, in Rust: `Options`, `RULES` and the gateway's settings all show
the same defaults, bounds and help texts."""

from __future__ import annotations

import inspect
import typing

import msgspec
import pytest
from trackgate import Options, settings
from trackgate._native import RULES, Rule

RULE_IDS = [rule.name for rule in RULES]


def test_the_rules_are_the_options_fields_in_order() -> None:
    parameters = inspect.signature(Options).parameters
    assert list(parameters) == RULE_IDS
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in parameters.values())
    assert all(rule.help for rule in RULES)


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_options_defaults_are_the_rules(rule: Rule) -> None:
    default = getattr(Options(), rule.name)
    assert (default, type(default)) == (rule.default, type(rule.default))
    assert inspect.signature(Options).parameters[rule.name].default == rule.default


def _rule(name: str, value: float) -> dict[str, typing.Any]:
    """One keyword argument of Options, typed loosely: each test passes a value of its own rule."""
    return {name: value}


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_options_hold_a_rule_to_its_bounds(rule: Rule) -> None:
    assert getattr(Options(**_rule(rule.name, rule.minimum)), rule.name) == rule.minimum
    with pytest.raises(ValueError, match=rule.name):
        Options(**_rule(rule.name, rule.minimum - 1))
    if rule.maximum is not None:
        assert getattr(Options(**_rule(rule.name, rule.maximum)), rule.name) == rule.maximum
        with pytest.raises(ValueError, match=rule.name):
            Options(**_rule(rule.name, rule.maximum + 1))


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_every_rule_is_a_setting_made_from_it(rule: Rule) -> None:
    [field] = [f for f in msgspec.structs.fields(settings.Settings) if f.name == rule.name]
    assert (field.default, type(field.default)) == (rule.default, type(rule.default))
    base, meta = typing.get_args(field.type)
    assert base is type(rule.default)
    assert (meta.description, meta.ge, meta.le) == (rule.help, rule.minimum, rule.maximum)


def test_the_settings_give_the_decoder_its_rules() -> None:
    changed = {"max_depth": 5, "max_age": 60.0, "partitions": 16}
    options = settings.build(environ={f"TRACKGATE_{k.upper()}": str(v) for k, v in changed.items()})
    decoder = options.decoder_options()
    assert {rule.name: getattr(decoder, rule.name) for rule in RULES} == {
        **{rule.name: rule.default for rule in RULES},
        **changed,
    }
