"""Event handlers live at module level and take the app and components they need as first arguments;
`bind` fixes those and keeps what Gradio reads from a handler (its signature for gr.Progress defaults,
its type hints for gr.SelectData), which functools.partial would hide."""
from __future__ import annotations

import inspect
import typing
from typing import Any, Callable


def bind(handler: Callable, *bound: Any) -> Callable:
    """`handler` with its first len(bound) arguments fixed."""
    def call(*args, **kwargs):
        return handler(*bound, *args, **kwargs)

    sig = inspect.signature(handler)
    params = list(sig.parameters.values())[len(bound):]
    call.__signature__ = sig.replace(parameters=params)
    hints = typing.get_type_hints(handler)
    call.__annotations__ = {p.name: hints[p.name] for p in params if p.name in hints}
    call.__name__ = call.__qualname__ = handler.__name__
    call.__doc__ = handler.__doc__
    return call
