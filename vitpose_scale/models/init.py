"""Deferred weight initialisation: build modules now, draw their weights later.

Models draw every weight in `init_weights()` and call it from their constructors. A builder
that needs the parameters to exist first in another form (sharded while being built, on the
meta device) wraps construction in `deferred_init()` and calls `model.init_weights()` itself
once the parameters can be written. The models know nothing about who does that.
"""
from __future__ import annotations

import contextlib
import contextvars

_DEFERRED = contextvars.ContextVar("vitpose_scale_deferred_init", default=False)


@contextlib.contextmanager
def deferred_init():
    token = _DEFERRED.set(True)
    try:
        yield
    finally:
        _DEFERRED.reset(token)


def init_is_deferred() -> bool:
    return _DEFERRED.get()
