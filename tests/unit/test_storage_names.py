"""Pure parts of esker.objectstore.service: name mapping, dataset access, bucket policies, the key store."""

from __future__ import annotations

import os
import re
import stat

import pytest

from esker.objectstore.errors import StorageError, StorageUnavailable
from esker.objectstore.names import Dataset, bucket_policy, check_prefix, dataset_access, rgw_name, service_uid
from esker.objectstore.service import StorageService
from esker.state.keystore import Identity, KeyStore

BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")

NAMES = [
    "alice", "Alice", "ALICE", "bob.smith", "bob_smith", "bob-smith", "bob--smith", "bob smith",
    "josé", "jose", "José", "Åsa.Öberg", "李雷", "韩梅梅", "😀", "a", "ab", "x" * 57, "x" * 58, "y" * 300,
    "-alice", "alice-", "xn--abc", "foo-s3alias", "a.b.c.d", "192.168.1.1", "user@example.org",
    "User@Example.org", "name with\ttab", "..", "-", "0", "sthree-x",
]


def test_clean_names_are_kept():
    assert rgw_name("alice") == "esker-alice"
    assert rgw_name("bob-smith") == "esker-bob-smith"
    assert rgw_name("a1", prefix="").startswith("a1--")  # too short for a bucket name: hashed
    assert rgw_name("abc", prefix="") == "abc"


@pytest.mark.parametrize("name", NAMES)
def test_every_name_is_a_valid_bucket(name):
    for prefix in ("esker-", "", "hub7-", "x"):
        b = rgw_name(name, prefix)
        assert BUCKET_RE.match(b), (name, prefix, b)
        assert ".." not in b and not b.startswith("xn--") and not b.endswith("-s3alias")
        assert b.startswith(prefix)
        assert rgw_name(name, prefix) == b  # deterministic


def test_changed_names_get_a_hash_and_stay_readable():
    b = rgw_name("Bob.Smith")
    assert re.fullmatch(r"esker-bob-smith--[a-z2-7]{10}", b)
    assert rgw_name("josé").startswith("esker-jose--")
    assert rgw_name("李雷").startswith("esker-u--")
    long = rgw_name("y" * 300)
    assert len(long) == 63 and long.startswith("esker-yyyy")


def test_no_collisions():
    names = NAMES + [n.upper() for n in NAMES] + [f"user{i}" for i in range(2000)] + [f"User.{i}" for i in range(2000)]
    names = list(dict.fromkeys(names))
    for prefix in ("esker-", ""):
        mapped = {}
        for n in names:
            b = rgw_name(n, prefix)
            assert b not in mapped, (n, mapped.get(b), b)
            mapped[b] = n


def test_clean_and_hashed_names_cannot_meet():
    # a user literally named like another's hashed form is itself hashed (it contains "--")
    hashed = rgw_name("Alice")
    literal = hashed[len("esker-"):]
    assert rgw_name(literal) != hashed
    assert "--" in rgw_name("a--b")


def test_service_uid_is_not_a_user_name():
    uid = service_uid("esker-")
    for n in ["datasets--owner", "datasets", "Datasets--Owner", "datasets-owner"]:
        assert rgw_name(n) != uid


@pytest.mark.parametrize("prefix", ["Esker-", "esker--", "-e", "a" * 31, "es_ker", "e.s"])
def test_bad_prefixes(prefix):
    with pytest.raises(ValueError):
        check_prefix(prefix)


def test_empty_username_rejected():
    with pytest.raises(ValueError):
        rgw_name("")


DATASETS = [
    Dataset.from_config({"name": "climate", "bucket": "data", "prefix": "climate"}),
    Dataset.from_config({"name": "genomes", "bucket": "data", "prefix": "genomes/", "groups": ["bio"],
                         "writers": ["bio-staff"]}),
    Dataset.from_config({"name": "public", "bucket": "pub"}),
]


def test_dataset_prefix_normalised():
    assert DATASETS[0].prefix == "climate/"
    assert DATASETS[0].url == "s3://data/climate/"
    assert DATASETS[2].prefix == ""


def test_dataset_access():
    assert dataset_access(DATASETS, []) == (("climate", "public"), ())
    assert dataset_access(DATASETS, ["bio"]) == (("climate", "genomes", "public"), ())
    assert dataset_access(DATASETS, ["bio-staff"]) == (("climate", "genomes", "public"), ("genomes",))
    everything = (("climate", "genomes", "public"), ("climate", "genomes", "public"))
    assert dataset_access(DATASETS, [], admin=True) == everything
    assert dataset_access(DATASETS, ["instructors"], writer_groups=["instructors"]) == everything


def test_bucket_policy():
    p = bucket_policy("data", DATASETS, {"climate": ["u1", "u2"], "genomes": ["u2"]}, {"genomes": ["u3"]})
    by_sid = {s["Sid"]: s for s in p["Statement"]}
    assert by_sid["Read0"]["Principal"]["AWS"] == ["arn:aws:iam:::user/u1", "arn:aws:iam:::user/u2"]
    assert by_sid["Read0"]["Resource"] == ["arn:aws:s3:::data/climate/*"]
    assert by_sid["List0"]["Condition"] == {"StringLike": {"s3:prefix": ["climate/*"]}}
    # writers read too
    assert by_sid["Read1"]["Principal"]["AWS"] == ["arn:aws:iam:::user/u2", "arn:aws:iam:::user/u3"]
    assert by_sid["Write1"]["Principal"]["AWS"] == ["arn:aws:iam:::user/u3"]
    assert "s3:PutObject" in by_sid["Write1"]["Action"]
    assert "Write0" not in by_sid
    whole = bucket_policy("pub", DATASETS, {"public": ["u1"]}, {})
    assert all("Condition" not in s for s in whole["Statement"])
    assert bucket_policy("pub", DATASETS, {}, {}) is None
    # The owner reads every object, also those others uploaded (theirs, by S3's object ownership).
    owned = bucket_policy("pub", DATASETS, {}, {}, owner="esker--datasets")
    assert owned["Statement"] == [{"Sid": "OwnerReads", "Effect": "Allow",
                                   "Principal": {"AWS": ["arn:aws:iam:::user/esker--datasets"]},
                                   "Action": ["s3:GetObject"], "Resource": ["arn:aws:s3:::pub/*"]}]


def test_key_store_encrypts_at_rest(tmp_path):
    store = KeyStore(tmp_path / "storage")
    store.put(Identity("alice", "esker-alice", "esker-alice", "AKIAEXAMPLE", "s3cr3t-VALUE-123", ("climate",)))
    got = store.get("alice")
    assert got.secret_key == "s3cr3t-VALUE-123" and got.readable == ("climate",)
    for f in (tmp_path / "storage").iterdir():
        assert b"s3cr3t-VALUE-123" not in f.read_bytes(), f
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o600, f
    assert stat.S_IMODE(os.stat(tmp_path / "storage").st_mode) == 0o700
    assert "s3cr3t" not in repr(got)
    # the same key file reopens it; another key cannot read it
    assert KeyStore(tmp_path / "storage").get("alice").secret_key == "s3cr3t-VALUE-123"
    from cryptography.fernet import Fernet, InvalidToken

    other = KeyStore(tmp_path / "storage", fernet_key=Fernet.generate_key())
    with pytest.raises(InvalidToken):
        other.get("alice")


def test_key_store_uid_owned_once(tmp_path):

    store = KeyStore(tmp_path)
    store.put(Identity("alice", "esker-alice", "esker-alice", "A", "S"))
    with pytest.raises(StorageError):
        store.put(Identity("mallory", "esker-alice", "esker-alice", "B", "T"))


def _spy_http(svc):
    """Record what the Admin Ops client hands urllib3 (its timeout) and what urllib3 raises, per call."""
    admin = svc.admin()
    real = admin._http.request
    calls = []

    def request(method, url, **kw):
        call = {"timeout": kw.get("timeout"), "error": None}
        calls.append(call)
        try:
            return real(method, url, **kw)
        except Exception as e:
            call["error"] = e
            raise

    admin._http.request = request
    return calls


def test_slow_gateway_gives_storage_unavailable_within_the_timeout(tmp_path):
    """A gateway that accepts connections and never answers: the client's own read timeout (bounded by
    storage.timeout) ends the call, on its first connection, so no worker thread is left waiting."""
    import asyncio
    import socket
    import threading

    import urllib3

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    # asyncio.run waits for its worker thread: a client without a read timeout would hang the test.
    # Closing the socket after a minute resets that connection, and the checks below then fail.
    guard = threading.Timer(60, srv.close)
    guard.start()
    try:
        svc = StorageService(f"http://127.0.0.1:{srv.getsockname()[1]}", ("AK", "SK"), tmp_path, timeout=1.5)
        calls = _spy_http(svc)
        with pytest.raises(StorageUnavailable, match="did not answer|timed out"):
            asyncio.run(svc.prepare("alice"))
        guard.cancel()
        assert svc.store.get("alice") is None
        assert len(calls) == 1
        timeout = calls[0]["timeout"]
        assert None not in (timeout.connect_timeout, timeout.read_timeout), timeout  # both bounded ...
        assert 0 < timeout.connect_timeout <= 1.5 and 0 < timeout.read_timeout <= 1.5  # ... by storage.timeout
        # urllib3 raises the read timeout itself, not MaxRetryError (what a retry loop ends in) ...
        assert isinstance(calls[0]["error"], urllib3.exceptions.ReadTimeoutError)
        # ... and the gateway saw exactly one connection.
        srv.setblocking(False)
        accepted = []
        while True:
            try:
                accepted.append(srv.accept()[0])
            except BlockingIOError:
                break
        for c in accepted:
            c.close()
        assert len(accepted) == 1
    finally:
        guard.cancel()
        srv.close()


def test_refused_gateway_gives_storage_unavailable_at_once(tmp_path):
    """A refused connection ends the operation on the first attempt: no retry, no wait for the deadline."""
    import asyncio

    import urllib3

    from esker.system.ports import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"
    svc = StorageService(endpoint, ("AK", "SK"), tmp_path, timeout=2)
    calls = _spy_http(svc)
    with pytest.raises(StorageUnavailable) as e:
        asyncio.run(svc.prepare("alice"))
    # The refusal's message, not the deadline's ("did not answer within 2 s").
    assert str(e.value) == f"object storage at {endpoint} is unreachable (connection refused)"
    assert len(calls) == 1
    assert type(calls[0]["error"]) is urllib3.exceptions.NewConnectionError  # not MaxRetryError
    assert svc.store.get("alice") is None
