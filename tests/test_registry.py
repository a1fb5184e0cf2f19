import doctest

import pytest

import posttrain.registry
from posttrain.registry import ADVANTAGE_ESTIMATORS, EVALUATORS, POLICY_LOSSES, Registry, check_plug_in


def test_doctests():
    assert doctest.testmod(posttrain.registry).failed == 0


def test_unknown_name_lists_valid_names_and_double_registration_fails():
    table: Registry[int] = Registry("widget")
    table.register("b")(2)
    table.register("a")(1)
    assert table.get("a") == 1 and "b" in table and table.names() == ["a", "b"]
    with pytest.raises(ValueError, match="unknown widget 'c'; valid: a, b"):
        table.get("c")
    with pytest.raises(ValueError, match="registered twice"):
        table.register("a")(3)


def test_provided_names_are_known_before_their_module_is_imported_and_loaded_on_lookup():
    table: Registry[int] = Registry("widget", {"json": "json"}, {"json": "stdlib"})
    assert "json" in table and table.names() == ["json"] and table.names("other") == []
    assert table.check("json", "stdlib") == "json"
    with pytest.raises(ValueError, match="'json' has the calling convention 'stdlib'; this stage calls 'other' ones"):
        table.check("json", "other")
    # `json` registers nothing in this table: the lookup imports it and still names the problem
    with pytest.raises(ValueError, match="unknown widget 'json'"):
        table.get("json")
    with pytest.raises(ValueError, match="declared 'stdlib' but registered 'other'"):
        table.register("json", "other")(1)


@pytest.mark.parametrize("table", [POLICY_LOSSES, ADVANTAGE_ESTIMATORS, EVALUATORS], ids=lambda t: t.what)
def test_every_built_in_name_the_schema_accepts_is_registered_by_its_module(table):
    """The names the recipe schema checks without torch resolve to real functions, with the declared labels
    (a label mismatch raises at registration)."""
    for name in table.names():
        assert callable(table.get(name))


def test_plug_in_values_are_names_or_file_functions():
    assert check_plug_in(ADVANTAGE_ESTIMATORS, "dr_grpo", "outcome") == "dr_grpo"
    assert check_plug_in(ADVANTAGE_ESTIMATORS, "my_estimators.py:centred", "outcome") == "my_estimators.py:centred"
    with pytest.raises(ValueError, match="this stage calls 'outcome' ones: dr_grpo, grpo, reinforce_pp, reinforce_pp_baseline, rloo"):
        check_plug_in(ADVANTAGE_ESTIMATORS, "gae", "outcome")
    with pytest.raises(ValueError, match="'path/to/file.py:function'"):
        check_plug_in(POLICY_LOSSES, "my_losses:clipped")
    with pytest.raises(ValueError, match="unknown policy loss 'ppo'; valid: cispo, grpo, gspo, ppo_clip"):
        check_plug_in(POLICY_LOSSES, "ppo")
