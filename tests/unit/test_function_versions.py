"""esker_client.functions.versions: ids and alias rules, as plain data."""

import sys
from pathlib import Path

import pytest

try:
    import esker_client  # noqa: F401  (installed in a notebook environment or the hub venv)
except ImportError:  # the test venv before `make`: the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "images" / "esker-client" / "src"))

from esker_client.functions import versions as V  # noqa: E402

PKGS = ["numpy==2.0.0", "pandas==2.2.0"]


def test_check_name():
    for ok in ("a", "predict", "my-fn-2", "a" * 31):
        assert V.check_name(ok) == ok
    for bad in ("", "A", "1abc", "-a", "a_b", "a" * 32, "a/b", "../x", None):
        with pytest.raises(ValueError, match="lowercase"):
            V.check_name(bad)


def test_version_id_stable_and_sensitive():
    base = V.version_id("def f(): pass\n", "minimal", {"a": 1, "b": 2}, PKGS)
    assert len(base) == 16 and int(base, 16) >= 0
    assert V.version_id("def f(): pass\n", "minimal", {"b": 2, "a": 1}, list(reversed(PKGS))) == base
    others = {
        V.version_id("def f(): pass \n", "minimal", {"a": 1, "b": 2}, PKGS),
        V.version_id("def f(): pass\n", "spark", {"a": 1, "b": 2}, PKGS),
        V.version_id("def f(): pass\n", "minimal", {"a": 1, "b": 3}, PKGS),
        V.version_id("def f(): pass\n", "minimal", {"a": 1, "b": 2}, ["numpy==2.0.1", "pandas==2.2.0"]),
        # the parts are length-prefixed: moving text between code and profile changes the id
        V.version_id("def f(): pass\nminimal", "", {"a": 1, "b": 2}, PKGS),
    }
    assert base not in others and len(others) == 5


def test_parse_semver():
    assert V.parse_semver("1.2.3") == (1, 2, 3)
    assert V.parse_semver("10.0.12") == (10, 0, 12)
    for bad in ("1.2", "v1.2.3", "01.2.3", "1.2.3-rc1", ""):
        with pytest.raises(ValueError, match="semver"):
            V.parse_semver(bad)


def test_publish_moves_latest_and_floating_forward_only():
    a = V.aliases_after_publish({}, "v1", None)
    assert a == {"latest": "v1"}
    a = V.aliases_after_publish(a, "v2", "1.2.3")
    assert a == {"latest": "v2", "1.2.3": "v2", "1.2": "v2", "1": "v2"}
    a = V.aliases_after_publish(a, "v3", "1.3.0")
    assert a == {"latest": "v3", "1.2.3": "v2", "1.2": "v2", "1.3.0": "v3", "1.3": "v3", "1": "v3"}
    # an older patch published later: latest moves, 1.2 moves (it is the highest 1.2.x? no: 1.2.3 is higher)
    b = V.aliases_after_publish(a, "v4", "1.2.1")
    assert b["latest"] == "v4" and b["1.2.1"] == "v4" and b["1.2"] == "v2" and b["1"] == "v3"
    # a higher patch moves 1.2 but not 1 (1.3.0 is higher)
    c = V.aliases_after_publish(b, "v5", "1.2.9")
    assert c["1.2"] == "v5" and c["1"] == "v3"
    assert a["1.2"] == "v2"  # the input is not changed


def test_pinned_is_immutable():
    a = V.aliases_after_publish({}, "v1", "1.0.0")
    assert V.aliases_after_publish(a, "v1", "1.0.0") == a  # same code again: fine
    with pytest.raises(V.VersionConflict, match="1.0.0"):
        V.aliases_after_publish(a, "v2", "1.0.0")
    with pytest.raises(V.VersionConflict, match="pinned"):
        V.move_alias(a, "1.0.0", "v2")


def test_rollback_moves_latest_and_floating():
    a = V.aliases_after_publish({}, "v1", "1.2.2")
    a = V.aliases_after_publish(a, "v2", "1.2.3")
    r = V.move_alias(a, "latest", "v1")
    assert r["latest"] == "v1" and r["1.2.3"] == "v2"
    r = V.move_alias(r, "1.2", "v1")
    assert r["1.2"] == "v1"
    with pytest.raises(ValueError, match="alias"):
        V.move_alias(a, "stable!", "v1")


def test_resolve():
    vids = ["abcdef0123456789", "abcdef9999999999", "1234567890abcdef"]
    aliases = {"latest": vids[2], "1.0.0": vids[0]}
    assert V.resolve(aliases, vids, "latest") == vids[2]
    assert V.resolve(aliases, vids, "1.0.0") == vids[0]
    assert V.resolve(aliases, vids, vids[1]) == vids[1]
    assert V.resolve(aliases, vids, "123456") == vids[2]
    with pytest.raises(LookupError, match="ambiguous"):
        V.resolve(aliases, vids, "abcdef")
    with pytest.raises(LookupError, match="latest") as e:
        V.resolve(aliases, vids, "12345")  # too short for a prefix
    assert vids[0] in str(e.value)
    with pytest.raises(LookupError, match="no version"):
        V.resolve(aliases, vids, "2.0.0")


def test_aliases_to_and_in_use():
    a = {"latest": "v2", "1.0.0": "v1", "1.0": "v1", "1": "v1"}
    assert V.aliases_to(a, "v1") == ["1", "1.0", "1.0.0"]
    assert V.aliases_to(a, "v3") == []
    e = V.VersionInUse("v1", V.aliases_to(a, "v1"))
    assert "1.0.0" in str(e) and "v1" in str(e)


def test_undo_takes_back_one_change_and_leaves_later_moves():
    from esker_client.functions.versions import undo
    before = {"latest": "a", "1.0.0": "a"}
    after = {"latest": "b", "1.0.0": "a", "1.1.0": "b", "1.1": "b"}
    assert undo(after, before, after) == before
    moved = {**after, "latest": "c", "1.1": "c"}  # someone published c meanwhile
    assert undo(moved, before, after) == {"latest": "c", "1.0.0": "a", "1.1": "c"}
