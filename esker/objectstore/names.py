"""Names and policies for object storage, as pure functions: hub user -> RGW user and bucket name (stable,
collision-free, within S3's rules), which datasets a user may read or write, and the bucket policies that
say so on the gateway.
"""

from __future__ import annotations

import base64
import hashlib
import re
import unicodedata
from dataclasses import dataclass
from typing import Iterable, Mapping

_IDENTITY_RE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_PREFIX_RE = re.compile(r"(?:[a-z0-9](?:-?[a-z0-9])*-?)?")
_HASH_LEN = 10  # base32 characters: 50 bits

def _name_hash(username: str) -> str:
    digest = hashlib.sha256(username.encode("utf-8")).digest()
    return base64.b32encode(digest).decode("ascii").lower()[:_HASH_LEN]


def check_prefix(prefix: str) -> str:
    if len(prefix) > 30 or not _PREFIX_RE.fullmatch(prefix) or "--" in prefix:
        raise ValueError(
            f"bucket_prefix {prefix!r}: use at most 30 lowercase letters, digits and single hyphens "
            "(for example 'esker-')"
        )
    return prefix


def rgw_name(username: str, prefix: str = "esker-") -> str:
    """The RGW uid and personal bucket name of a hub user: a valid S3 bucket name, 3-63 characters.

    A username that is already a clean bucket-name fragment maps to ``prefix + username``. Any other
    (capitals, dots, unicode, too long, ...) maps to ``prefix + sanitized + "--" + hash``, where the hash
    is 10 base32 characters of SHA-256 of the exact username. Clean names never contain ``--`` and
    sanitized ones always do, so two different usernames never map to the same name (up to a 50-bit hash
    collision between names with the same sanitized form).
    """
    check_prefix(prefix)
    if not isinstance(username, str) or not username:
        raise ValueError("username must be a non-empty string")
    room = 63 - len(prefix)
    full = prefix + username
    if (
        _IDENTITY_RE.fullmatch(username)
        and 3 <= len(full) <= 63
        and not full.startswith(("xn--", "sthree-"))
        and not full.endswith(("-s3alias", "--ol-s3"))
    ):
        return full
    base = unicodedata.normalize("NFKD", username).encode("ascii", "ignore").decode("ascii").lower()
    base = re.sub(r"[^a-z0-9]+", "-", base).strip("-")
    suffix = "--" + _name_hash(username)
    base = base[: room - len(suffix)].rstrip("-") or "u"
    return prefix + base + suffix


def service_uid(prefix: str = "esker-") -> str:
    """The RGW user owning the shared dataset buckets; no hub username maps to it."""
    return f"{check_prefix(prefix)}datasets--owner"


def user_arn(uid: str) -> str:
    return f"arn:aws:iam:::user/{uid}"


# --------------------------------------------------------------------------- datasets and policies
@dataclass(frozen=True)
class Dataset:
    name: str
    bucket: str
    prefix: str = ""  # "" (whole bucket) or ending in "/"
    groups: tuple[str, ...] = ()  # readers; empty: every user
    writers: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, d: Mapping) -> "Dataset":
        prefix = d.get("prefix", "") or ""
        prefix = prefix.lstrip("/")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        return cls(d["name"], d["bucket"], prefix, tuple(d.get("groups") or ()), tuple(d.get("writers") or ()))

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


def dataset_access(
    datasets: Iterable[Dataset],
    groups: Iterable[str] = (),
    admin: bool = False,
    writer_groups: Iterable[str] = (),
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(readable, writable) dataset names for a user: writers are admins, members of `writer_groups`
    (instructors) and of the dataset's own `writers`; readers are writers plus the dataset's `groups`
    (everyone when it names none)."""
    groups = set(groups)
    instructor = admin or bool(groups & set(writer_groups))
    readable, writable = [], []
    for d in datasets:
        w = instructor or bool(groups & set(d.writers))
        r = w or not d.groups or bool(groups & set(d.groups))
        if r:
            readable.append(d.name)
        if w:
            writable.append(d.name)
    return tuple(readable), tuple(writable)


READ_OBJECT_ACTIONS = ["s3:GetObject"]
WRITE_OBJECT_ACTIONS = ["s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"]


def bucket_policy(bucket: str, datasets: Iterable[Dataset], readers: Mapping[str, Iterable[str]],
                  writers: Mapping[str, Iterable[str]], owner: str | None = None) -> dict | None:
    """The bucket policy for a dataset bucket (pure). `readers`/`writers`: dataset name -> RGW uids.

    `owner` (the hub's service user, whose keys serve the embedded dataset mounts) gets one statement: reading
    every object. An object belongs to whoever uploaded it (S3's object ownership), so without it the owner
    gets 403 for what instructors upload with their own keys, and a mount shows such files empty.
    None: nobody has access beyond the owner's own objects (no policy).
    """
    statements: list[dict] = []
    if owner:
        statements.append({"Sid": "OwnerReads", "Effect": "Allow", "Principal": {"AWS": [user_arn(owner)]},
                           "Action": READ_OBJECT_ACTIONS, "Resource": [f"arn:aws:s3:::{bucket}/*"]})
    all_readers: set[str] = set()
    uploaders: set[str] = set()
    for i, d in enumerate(sorted((d for d in datasets if d.bucket == bucket), key=lambda d: d.name)):
        w = sorted(set(writers.get(d.name, ())))
        r = sorted(set(readers.get(d.name, ())) | set(w))
        objects = f"arn:aws:s3:::{bucket}/{d.prefix}*"
        if r:
            all_readers.update(r)
            statements.append({"Sid": f"Read{i}", "Effect": "Allow", "Principal": {"AWS": [user_arn(u) for u in r]},
                               "Action": READ_OBJECT_ACTIONS, "Resource": [objects]})
            listing = {"Sid": f"List{i}", "Effect": "Allow", "Principal": {"AWS": [user_arn(u) for u in r]},
                       "Action": ["s3:ListBucket"], "Resource": [f"arn:aws:s3:::{bucket}"]}
            if d.prefix:
                listing["Condition"] = {"StringLike": {"s3:prefix": [f"{d.prefix}*"]}}
            statements.append(listing)
        if w:
            uploaders.update(w)
            statements.append({"Sid": f"Write{i}", "Effect": "Allow", "Principal": {"AWS": [user_arn(u) for u in w]},
                               "Action": WRITE_OBJECT_ACTIONS, "Resource": [objects]})
    if uploaders:
        statements.append({"Sid": "Uploads", "Effect": "Allow",
                           "Principal": {"AWS": [user_arn(u) for u in sorted(uploaders)]},
                           "Action": ["s3:ListBucketMultipartUploads"], "Resource": [f"arn:aws:s3:::{bucket}"]})
    if all_readers:
        statements.append({"Sid": "Location", "Effect": "Allow",
                           "Principal": {"AWS": [user_arn(u) for u in sorted(all_readers)]},
                           "Action": ["s3:GetBucketLocation"], "Resource": [f"arn:aws:s3:::{bucket}"]})
    if not statements:
        return None
    return {"Version": "2012-10-17", "Statement": statements}
