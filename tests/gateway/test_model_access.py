"""Unit tests of the model allow-list: the settings' list or the model server's, narrowed per
role, admins every allowed model (issue 11, item 12)."""

from __future__ import annotations

import pytest

from services.gateway.errors import ModelNotAllowed
from services.gateway.model_access import ModelAccess

ROLE_MODELS = {"user": ["cheap"], "manager": ["cheap", "mid"], "anonymous": []}


def test_each_role_may_use_its_own_models_and_admins_every_allowed_one():
    access = ModelAccess(["cheap", "mid", "pricey"], ROLE_MODELS)
    assert access.usable_by({"user"}) == ["cheap"]
    assert access.usable_by({"manager"}) == ["cheap", "mid"]
    assert access.usable_by({"admin"}) == ["cheap", "mid", "pricey"]
    assert access.usable_by({"user", "manager"}) == ["cheap", "mid"]  # any of its roles
    assert access.usable_by(set()) == []  # anonymous: only the default model
    assert access.usable_by({"auditor"}) == ["cheap", "mid", "pricey"]  # a role not named


def test_without_role_models_everyone_may_use_every_allowed_model():
    access = ModelAccess(["cheap", "mid"], {})
    assert access.usable_by({"user"}) == access.usable_by(set()) == ["cheap", "mid"]


def test_a_refused_model_names_what_the_caller_may_use_and_none_is_the_default():
    access = ModelAccess(["cheap", "mid", "pricey"], ROLE_MODELS)
    access.check(None, {"user"})
    access.check("cheap", {"user"})
    access.check("pricey", {"admin"})
    with pytest.raises(ModelNotAllowed) as refused:
        access.check("pricey", {"user"})
    assert refused.value.code == "model_not_allowed"
    assert "'pricey'" in refused.value.message and "['cheap']" in refused.value.message
    with pytest.raises(ModelNotAllowed):
        access.check("o1-pro-most-expensive", {"admin"})


def test_the_model_servers_list_replaces_the_settings_and_role_lists_narrow_it():
    access = ModelAccess(["fallback"], ROLE_MODELS)
    assert access.allowed == ("fallback",)
    assert access.usable_by({"user"}) == []  # "cheap" is not allowed yet
    access.serve(["pricey", "cheap", "cheap"])
    assert access.allowed == ("pricey", "cheap")
    assert access.usable_by({"user"}) == ["cheap"]
    assert access.usable_by({"admin"}) == ["pricey", "cheap"]
    with pytest.raises(ModelNotAllowed):
        access.check("fallback", {"admin"})
