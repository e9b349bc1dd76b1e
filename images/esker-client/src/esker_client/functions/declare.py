"""The ``@function`` decorator: marks the entry of a function to publish (docs/functions.md, "Declaring").

It returns the function unchanged (calling it in the notebook is a plain call); the options are recorded as
attributes for the function server. The CLI reads them from the source with ``ast``, never by running it.
"""

from __future__ import annotations

from typing import Callable, Optional

ATTR = "__esker_function__"


def function(fn: Optional[Callable] = None, *, name: Optional[str] = None, timeout: Optional[float] = None,
             concurrency: Optional[int] = None):
    """Mark ``fn`` as a publishable function: ``@function`` or ``@function(name=..., timeout=..., concurrency=...)``.

    name: the published name (default: the function's own, with '_' as '-'); timeout: seconds a call may run;
    concurrency: calls at once in this function's server.
    """
    if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
    if concurrency is not None and not (isinstance(concurrency, int) and concurrency >= 1):
        raise ValueError(f"concurrency must be an integer >= 1, not {concurrency!r}")

    def mark(f: Callable) -> Callable:
        setattr(f, ATTR, {"name": name, "timeout": timeout, "concurrency": concurrency})
        return f

    return mark(fn) if fn is not None else mark
