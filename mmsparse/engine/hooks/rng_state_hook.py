"""Save torch's random number generator state in checkpoints; restore it on resume."""
import torch
from mmengine.hooks import Hook

from mmsparse.registry import HOOKS


@HOOKS.register_module()
class RNGStateHook(Hook):
    """Make ``--resume`` draw the same random numbers as an uninterrupted run.

    mmengine restores weights, optimizer and iteration, not torch's RNG, which MMDetection's
    RPN and RoI samplers draw from; a resumed run then trains on other samples and its
    weights (and the masks regenerated from them) drift from an uninterrupted run. The data
    pipeline's numpy RNG needs nothing: mmengine replays the skipped batches on resume.
    States are tensors, so checkpoints still load with ``weights_only=True``.
    """

    priority = 'VERY_LOW'

    def before_save_checkpoint(self, runner, checkpoint):
        checkpoint['torch_rng_state'] = torch.get_rng_state()
        if torch.cuda.is_available():
            checkpoint['cuda_rng_state'] = torch.cuda.get_rng_state_all()

    def after_load_checkpoint(self, runner, checkpoint):
        if not getattr(runner, '_resume', False) or 'torch_rng_state' not in checkpoint:
            return
        torch.set_rng_state(checkpoint['torch_rng_state'])
        if torch.cuda.is_available() and 'cuda_rng_state' in checkpoint:
            torch.cuda.set_rng_state_all(checkpoint['cuda_rng_state'])
