"""mmengine adapters: hooks, distributed set-up, training helpers.

Importing this package allow-lists mmengine checkpoints' globals for ``weights_only`` loads.
"""
from mmsparse.utils.checkpoint import register_checkpoint_safe_globals

register_checkpoint_safe_globals()

from . import hooks, optimizers, runner  # noqa: E402,F401
