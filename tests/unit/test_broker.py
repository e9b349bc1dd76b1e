"""The task broker's names and ACL rules as plain data (esker.core.broker), and the config's check of its url."""

from __future__ import annotations

import pytest
import yaml

from esker import resources
from esker.core import broker
from esker.core.config import ConfigError, validate


def test_each_function_gets_its_own_user_and_a_prefix_no_user_name_can_widen():
    a, b = broker.key_prefix("alice", "predict"), broker.key_prefix("alice*", "predict")
    assert a != b and a.startswith("esker:fn:") and broker.key_prefix("alice", "other") != a
    for owner in ("alice*", "b[o]b?", "x\\y", "ev:il"):
        assert set(broker.function_id(owner, "f")) <= set("0123456789abcdef")
    assert broker.acl_user("alice", "predict") != broker.acl_user("bob", "predict")


def test_the_rules_reset_first_and_grant_no_key_listing_scripting_or_admin():
    rules = broker.acl_rules("alice", "predict", "p" * 43)
    assert rules[0] == "reset" and f">{'p' * 43}" in rules and "resetchannels" in rules
    assert [r for r in rules if r.startswith("~")] == [f"~{broker.key_prefix('alice', 'predict')}*"]
    granted = {r[1:] for r in rules if r.startswith("+")}
    assert not granted & {"scan", "keys", "randomkey", "eval", "evalsha", "acl", "config", "client", "monitor",
                          "publish", "subscribe", "flushall", "flushdb", "@all", "@dangerous", "multi", "exec"}
    assert "-@all" in rules and rules.index("-@all") < min(rules.index(f"+{c}") for c in granted)
    with pytest.raises(ValueError):
        broker.acl_rules("alice", "predict", "short")
    with pytest.raises(ValueError):
        broker.acl_rules("alice", "predict", "p" * 40 + " +@all")


def _config(url):
    data = yaml.safe_load(resources.SHIPPED_CONFIG.read_text())
    data.setdefault("functions", {})["broker"] = {"url": url}
    return validate(data)


def test_a_broker_url_with_credentials_or_another_scheme_fails_naming_the_field():
    assert _config("redis://esker-functions-broker:6379/0")["functions"]["broker"]["url"]
    assert _config("")["functions"]["broker"]["password_env"] == broker.PASSWORD_ENV
    for bad in ("redis://:secret@host:6379", "redis://user:pw@host", "http://host:6379", "redis://"):
        with pytest.raises(ConfigError, match=r"functions\.broker\.url"):
            _config(bad)


def test_a_hub_with_a_broker_url_but_no_password_does_not_start():
    import logging

    from esker.functions.broker import BrokerError, admin_from_config, check_at_start

    functions = {"broker": {"url": "redis://127.0.0.1:1/0", "password_env": "ESKER_TEST_NO_SUCH_VAR"}}
    with pytest.raises(RuntimeError, match="ESKER_TEST_NO_SUCH_VAR"):
        check_at_start(functions, {}, logging.getLogger("test"))
    with pytest.raises(BrokerError, match="functions.broker.password_env"):
        admin_from_config(functions, {}).grant("alice", "f")  # a spawn says the same
    assert admin_from_config({"broker": {"url": ""}}, {}) is None
    check_at_start({"broker": {}}, {}, logging.getLogger("test"))  # no broker: nothing to check
