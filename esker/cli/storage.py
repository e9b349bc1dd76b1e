"""`esker storage` (users' S3 identities) and `esker data` (publishing files to object storage).

Both read the configuration from $ESKER_CONFIG (esker.core.config.load) and keep state in $ESKER_STATE_DIR.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

from esker.core import config
from esker.objectstore.errors import StorageError
from esker.objectstore.service import StorageService


def _state_dir() -> str:
    if os.environ.get("ESKER_STATE_DIR"):
        return os.environ["ESKER_STATE_DIR"]
    if os.geteuid() == 0:
        return "/var/lib/esker"
    return str(Path.home() / ".local" / "share" / "esker")


def _service(args):
    cfg = config.load(getattr(args, "config", None))
    if not cfg["storage"]["enabled"]:
        raise SystemExit(f"{cfg.source}: object storage is not enabled (storage.enabled: false)")
    return StorageService.from_config(cfg, _state_dir())


def _fail(e: Exception) -> int:
    print(f"esker: {e}", file=sys.stderr)
    return 1


def _print_identity(svc, grant: dict, show_secret: bool, as_json: bool) -> None:
    out = dict(grant)
    if not show_secret:
        out["secret_key"] = "(hidden: --show-secret prints it)"
    if as_json:
        print(json.dumps(out, indent=1))
        return
    for key in ("endpoint", "region", "bucket", "access_key", "secret_key", "datasets"):
        print(f"{key:>11}: {out.get(key) or '-'}")


# ------------------------------------------------------------------------------------------ storage
def cmd_show(args) -> int:
    try:
        svc = _service(args)
        ident = svc.show(args.user)
        if ident is None:
            print(f"{args.user} has no object storage identity yet (one is made at the first spawn, "
                  f"or by `esker storage prepare {args.user}`); it would be {svc.names(args.user)}",
                  file=sys.stderr)
            return 1
        grant = svc._grant(ident)
        grant["uid"] = ident.uid
        grant["writable"] = ",".join(ident.writable)
        _print_identity(svc, grant, args.show_secret, args.json)
        return 0
    except (StorageError, config.ConfigError, ValueError) as e:
        return _fail(e)


def cmd_prepare(args) -> int:
    try:
        svc = _service(args)
        grant = svc.prepare_sync(args.user, groups=args.group or (), admin=args.admin)
        _print_identity(svc, grant, args.show_secret, args.json)
        return 0
    except (StorageError, config.ConfigError, ValueError) as e:
        return _fail(e)


def cmd_rotate(args) -> int:
    try:
        svc = _service(args)
        grant = svc.rotate_sync(args.user)
        print(f"new keys for {args.user}; the old ones no longer work (restart the user's server to "
              "give it the new ones)", file=sys.stderr)
        for path in _detach_bucket_mount(args, grant["bucket"]):
            print(f"{args.user}'s bucket mount at {path} is detached (it used the old keys); their next start "
                  "mounts it again", file=sys.stderr)
        _print_identity(svc, grant, args.show_secret, args.json)
        return 0
    except (StorageError, config.ConfigError, ValueError) as e:
        return _fail(e)


def _detach_bucket_mount(args, bucket: str) -> list[str]:
    """An embedded server's mount of this user's bucket holds the old keys: s3fs answers a refused key with
    empty files, so it is unmounted now (the folder then refuses access) rather than left half-working."""
    from esker.objectstore import mounts
    from esker.spawner.embedded import account_name

    cfg = config.load(getattr(args, "config", None))
    state = os.path.realpath(_state_dir())
    path = os.path.join(mounts.account_root(state, account_name(cfg, args.user)), bucket)
    return mounts.detach(state, path)


def cmd_delete(args) -> int:
    try:
        svc = _service(args)
        if args.purge and not args.yes:
            print(f"--purge deletes {svc.names(args.user)} and every object it owns: add --yes to confirm",
                  file=sys.stderr)
            return 2
        svc.delete_user_sync(args.user, purge=args.purge)
        print(f"{args.user}: " + ("RGW user and its buckets deleted" if args.purge
                                  else "keys removed and RGW user suspended (data kept)"))
        return 0
    except (StorageError, config.ConfigError, ValueError) as e:
        return _fail(e)


# ------------------------------------------------------------------------------------------ data
def parse_s3_url(url: str) -> tuple[str, str]:
    """'s3://bucket/some/prefix' -> ('bucket', 'some/prefix')."""
    if not url.startswith("s3://"):
        raise ValueError(f"{url!r} is not an s3://bucket/prefix URL")
    bucket, _, key = url[5:].partition("/")
    if not bucket:
        raise ValueError(f"{url!r} names no bucket")
    return bucket, key


def upload_plan(path: Path, key: str) -> list[tuple[Path, str]]:
    """(local file, object key) pairs, like `aws s3 cp [--recursive]`: a directory goes under key/, a file
    to key itself, or to key + its name when key is empty or ends with '/'."""
    if path.is_dir():
        base = key if not key or key.endswith("/") else key + "/"
        files = sorted(p for p in path.rglob("*") if p.is_file())
        return [(p, base + p.relative_to(path).as_posix()) for p in files]
    if not path.is_file():
        raise ValueError(f"{path}: no such file or directory")
    return [(path, key + path.name if not key or key.endswith("/") else key)]


class _Progress:
    """Bytes sent, shown on one line (a terminal) or at every quarter (a log)."""

    def __init__(self, name: str, size: int, stream=None):
        self.name, self.size, self.stream = name, size, stream or sys.stderr
        self.done = 0
        self.t0 = time.monotonic()
        self.tty = self.stream.isatty()
        self._lock = threading.Lock()
        self._last = -1

    def __call__(self, n: int) -> None:
        with self._lock:
            self.done += n
            pct = 100 * self.done // self.size if self.size else 100
            if self.tty:
                rate = self.done / max(time.monotonic() - self.t0, 1e-6) / 1e6
                self.stream.write(f"\r  {self.name}  {self.done / 1e6:8.1f}/{self.size / 1e6:.1f} MB {pct:3d}% "
                                  f"{rate:7.1f} MB/s")
                self.stream.flush()
            elif pct // 25 > self._last and pct < 100:
                self._last = pct // 25
                print(f"  {self.name}  {pct}%", file=self.stream)

    def finish(self) -> None:
        dt = max(time.monotonic() - self.t0, 1e-6)
        end = "\r" if self.tty else ""
        print(f"{end}  {self.name}  {self.size / 1e6:.1f} MB  100%  {self.size / dt / 1e6:.1f} MB/s" + " " * 10,
              file=self.stream)


def cmd_upload(args) -> int:
    from boto3.s3.transfer import TransferConfig

    try:
        bucket, key = parse_s3_url(args.dest)
        plan = upload_plan(Path(args.path), key)
        if not plan:
            print(f"{args.path}: nothing to upload", file=sys.stderr)
            return 1
        svc = _service(args)
        if args.as_user:
            ident = svc.show(args.as_user)
            if ident is None:
                svc.prepare_sync(args.as_user)
                ident = svc.show(args.as_user)
        else:
            ident = svc.credentials_for_bucket(bucket)
            if ident is None:
                raise StorageError(f"no keys this hub holds own bucket {bucket}: pass --as USER to upload "
                                   "with a user's keys")
        part = config.parse_size(args.part_size)
        if part < 5 * 1024**2:
            raise ValueError("--part-size must be at least 5M (S3's minimum part size)")
        transfer = TransferConfig(multipart_threshold=part, multipart_chunksize=part,
                                  max_concurrency=args.concurrency, use_threads=args.concurrency > 1)
        s3 = svc.s3(ident)
        who = ident.username or "the datasets owner"
        total = sum(p.stat().st_size for p, _ in plan)
        print(f"uploading {len(plan)} file(s), {total / 1e6:.1f} MB, to s3://{bucket}/{key} as {who} "
              f"({ident.uid})", file=sys.stderr)
        t0 = time.monotonic()
        for path, obj in plan:
            progress = _Progress(obj, path.stat().st_size)
            s3.upload_file(str(path), bucket, obj, Config=transfer, Callback=progress)
            progress.finish()
        dt = max(time.monotonic() - t0, 1e-6)
        print(f"done: {len(plan)} file(s), {total / 1e6:.1f} MB in {dt:.1f} s ({total / dt / 1e6:.1f} MB/s)",
              file=sys.stderr)
        return 0
    except Exception as e:  # noqa: BLE001 - one line for the operator, not a traceback
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        if isinstance(e, (StorageError, config.ConfigError, ValueError, ClientError, BotoCoreError,
                          S3UploadFailedError, OSError)):
            return _fail(e)
        raise


# ------------------------------------------------------------------------------------------ wiring
def register(sub) -> None:
    st = sub.add_parser(
        "storage",
        help="users' S3 identities (show, prepare, rotate, delete)",
        description="Manage users' S3 identities on the RADOS Gateway (through its Admin Ops API). Reads "
        "$ESKER_CONFIG; keys are kept encrypted in $ESKER_STATE_DIR/storage.",
    )
    ss = st.add_subparsers(dest="storage_command", metavar="ACTION", required=True)

    def common(p, secret=True):
        p.add_argument("user", metavar="USER", help="hub username")
        p.add_argument("--config", help="config file (default: $ESKER_CONFIG or the shipped esker.yaml)")
        if secret:
            p.add_argument("--show-secret", action="store_true", help="print the secret key too")
            p.add_argument("--json", action="store_true", help="JSON output")

    p = ss.add_parser("show", help="a user's bucket, access key and datasets",
                      description="Show a user's RGW uid, bucket, access key and datasets. The secret key is "
                      "printed only with --show-secret.")
    common(p)
    p.set_defaults(func=cmd_show)

    p = ss.add_parser("prepare", help="create (or repair) a user's identity and bucket now",
                      description="What a spawn does: make sure the user has an RGW user, keys and a bucket, "
                      "and dataset access for the given groups.")
    common(p)
    p.add_argument("--group", action="append", metavar="GROUP", help="the user's groups (repeat)")
    p.add_argument("--admin", action="store_true", help="treat the user as a hub admin (writes datasets)")
    p.set_defaults(func=cmd_prepare)

    p = ss.add_parser("rotate", help="new keys for a user; the old ones stop working",
                      description="Issue new S3 keys for USER and remove the old ones at once. A running "
                      "server keeps the old (now invalid) keys until it restarts.")
    common(p)
    p.set_defaults(func=cmd_rotate)

    p = ss.add_parser("delete", help="remove a user's keys (or, with --purge, the user and its data)",
                      description="Remove USER's keys and suspend its RGW user; its bucket is kept. The next "
                      "spawn issues new keys. --purge --yes deletes the RGW user and its buckets.")
    common(p, secret=False)
    p.add_argument("--purge", action="store_true", help="delete the RGW user and every object it owns")
    p.add_argument("--yes", action="store_true", help="confirm --purge")
    p.set_defaults(func=cmd_delete)

    data = sub.add_parser("data", help="publish files to object storage (upload)",
                          description="Move data into the hub's object storage.")
    ds = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    p = ds.add_parser(
        "upload",
        help="upload a file or directory to s3://bucket/prefix",
        description="Upload PATH (a file, or a directory recursively) to s3://BUCKET/PREFIX with progress; "
        "files larger than --part-size go up in parts (multipart). The keys used are the datasets owner's "
        "for a dataset bucket, the owner's for a personal bucket, or USER's with --as USER.",
    )
    p.add_argument("path", metavar="PATH", help="file or directory")
    p.add_argument("dest", metavar="s3://BUCKET/PREFIX", help="destination")
    p.add_argument("--as", dest="as_user", metavar="USER", help="upload with this hub user's keys")
    p.add_argument("--part-size", default="16M", help="multipart threshold and part size (default 16M)")
    p.add_argument("--concurrency", type=int, default=4, help="parts in flight per file (default 4)")
    p.add_argument("--config", help="config file (default: $ESKER_CONFIG or the shipped esker.yaml)")
    p.set_defaults(func=cmd_upload)
