"""mmengine adapters: hooks, distributed set-up, training helpers."""
from . import hooks  # noqa: F401
