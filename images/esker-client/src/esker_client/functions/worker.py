"""One worker process of the function server: imports a version's code.py once, then answers calls.

`python -m esker_client.functions.worker CODE_PY ENTRY MODULE_NAME`. The protocol is one JSON line per
message on the pipes the server opened as stdin/stdout; the function's own prints go to stderr (the server's
log), never into the protocol. First message: `{"ready": true, "schema": {...}}` or
`{"ready": false, "error": {...}}`; then per request line `{"args": {...}}` one answer:
`{"status": 200, "result": ...}` or `{"status": 422|500, "error": {...}}`."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import traceback


def _die_with_the_server() -> None:
    """Linux: SIGKILL this worker when the server dies, even by SIGKILL (its calls have no one to answer)."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the server already went before prctl took effect
        os._exit(1)


def _protocol():
    """Keep the pipes for the protocol and point fds 0/1 elsewhere, so user code reading stdin or printing
    cannot corrupt it."""
    proto_in = os.fdopen(os.dup(0), "r", encoding="utf-8")
    proto_out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    sys.stdin = open(os.devnull)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    return proto_in, proto_out


def _own_frames(exc: BaseException, code_path: str) -> list[str]:
    """The traceback lines of the function's own code only (never the platform's frames)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == code_path]
    return traceback.format_list(frames)


def _error(exc: BaseException, code_path: str) -> dict:
    return {"type": type(exc).__name__, "message": str(exc), "traceback": _own_frames(exc, code_path)}


def load(code_path: str, entry: str, module_name: str):
    spec = importlib.util.spec_from_file_location(module_name, code_path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    fn = getattr(module, entry, None)
    if fn is None:
        raise LookupError(f"code.py has no {entry!r} (the manifest's entry)")
    fn = getattr(fn, "__wrapped__", fn) if not callable(fn) else fn
    if not callable(fn):
        raise TypeError(f"{entry!r} in code.py is a {type(fn).__name__}, not a function")
    return fn


def main(argv: list[str]) -> int:
    code_path, entry, module_name = argv
    _die_with_the_server()
    proto_in, proto_out = _protocol()

    def send(msg: dict) -> None:
        proto_out.write(json.dumps(msg, allow_nan=False) + "\n")
        proto_out.flush()

    # pydantic imported here, after the protocol is safe: the schema module is pure and never runs user code
    from esker_client.functions.schema import Signature, validation_fields
    import pydantic

    try:
        fn = load(code_path, entry, module_name)
        sig = Signature(fn)
        schemas = sig.schemas()
    except BaseException as e:  # a broken publish: the server answers 500 with this, and keeps serving
        send({"ready": False, "error": _error(e, code_path)})
        return 1
    send({"ready": True, "schema": schemas})

    for line in proto_in:
        try:
            body = json.loads(line)["args"]
        except (ValueError, KeyError, TypeError):
            send({"status": 400, "error": {"type": "BadRequest", "message": "malformed worker request"}})
            continue
        try:
            args = sig.arguments(body)
        except pydantic.ValidationError as e:
            fields = validation_fields(e)
            where = ", ".join(".".join(map(str, f["loc"])) or "(body)" for f in fields)
            send({"status": 422, "error": {"type": "ValidationError", "message": f"invalid arguments: {where}",
                                           "fields": fields}})
            continue
        try:
            value = fn(**args)
        except BaseException as e:  # SystemExit and KeyboardInterrupt too: the worker keeps serving
            send({"status": 500, "error": _error(e, code_path)})
            continue
        try:
            send({"status": 200, "result": sig.result(value)})
        except (TypeError, ValueError) as e:
            send({"status": 500, "error": {"type": "TypeError", "message": str(e)}})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
