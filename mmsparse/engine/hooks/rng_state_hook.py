"""Save torch's random number generator state in checkpoints; restore it on resume."""
import torch
from mmengine.dist import all_gather, get_dist_info, is_distributed
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

    Under DDP each rank's samplers draw on its own images, so the ranks' states differ,
    and only rank 0 writes checkpoints: after every iteration the ranks gather their states
    (a few KB), rank 0 saves them all, and each rank restores its own.
    """

    priority = 'LOW'  # gathers after the iteration, before CheckpointHook (VERY_LOW) saves

    def __init__(self):
        self._rank_states = {}

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if is_distributed():
            self._rank_states = dict(torch_rng_states=torch.stack(all_gather(
                torch.get_rng_state())))
            if torch.cuda.is_available():
                self._rank_states['cuda_rng_states'] = torch.stack(all_gather(
                    torch.cuda.get_rng_state()))

    def before_save_checkpoint(self, runner, checkpoint):
        checkpoint['torch_rng_state'] = torch.get_rng_state()
        if torch.cuda.is_available():
            checkpoint['cuda_rng_state'] = torch.cuda.get_rng_state_all()
        checkpoint.update(self._rank_states)

    def after_load_checkpoint(self, runner, checkpoint):
        if not getattr(runner, '_resume', False) or 'torch_rng_state' not in checkpoint:
            return
        rank, world_size = get_dist_info()
        states = checkpoint.get('torch_rng_states')
        if states is not None and len(states) == world_size:
            # a copy: a row of the stacked states starts inside their storage, which
            # set_rng_state does not take (rank 1 crashed on the view)
            torch.set_rng_state(states[rank].clone())
            if torch.cuda.is_available() and 'cuda_rng_states' in checkpoint:
                torch.cuda.set_rng_state(checkpoint['cuda_rng_states'][rank].clone())
            return
        torch.set_rng_state(checkpoint['torch_rng_state'])
        if torch.cuda.is_available() and 'cuda_rng_state' in checkpoint:
            torch.cuda.set_rng_state_all(checkpoint['cuda_rng_state'])
