"""Train the dense network on every iteration alongside the sparse subnet (joint dense loss).

Sparse Cocktail's dense pivot gives the dense network every other iteration. When the
task is far from converged at the iteration budget, half the dense updates cost the dense
subnet much more accuracy than the sparse steps give back (docs/results.md, 1024 training
images). With the joint dense loss every iteration trains one sparse subnet *and* the dense
network: a forward hook on the detector runs MMDetection's loss forward a second time with
the dense network active and adds its losses under ``dense.<key>``. One backward goes
through both passes and the optimizer takes one step, as in the slimmable networks'
"sandwich rule". No MMDetection code changes; the hooks fire inside DDP's forward.

Two ways to feed the passes:

- same batch (default): both passes see the whole batch; an iteration costs about two
  forward/backward passes;
- ``split_batch=True``: a forward pre-hook gives the sparse pass the first half of the
  batch and the dense pass the second half, so an iteration costs about one pass over the
  batch, as in plain training. Each network then sees half the images per update, but
  gets an update every iteration. ``dense_share`` moves the split (e.g. 0.75: the dense
  pass gets 6 of 8 images).

Both passes' losses are means over their own images, so their plain sum has about twice
the gradient of one pass over the batch: the joint step then moves the shared weights with
about twice plain training's step. ``mean_losses=True`` weights each pass's losses by its
share of the batch (0.5 and 0.5 for the same batch), so the summed loss is a mean over the
batch and the step has plain training's scale.

The plain sum at ``weight=2.0`` moves the weights about three times as far as plain
training, and was measured with gradients clipped at norm 35 (the shapes schedule's).
Under a schedule without clipping (MMDetection's Mask R-CNN 1x) it diverged to NaN early, so
:class:`mmsparse.SparseCocktailHook` gives an optimizer that clips nothing ``clip_grad``
(default ``CLIP_GRAD``, norm 10: at 35 the loss still spiked as high as 1033; docs/training.md,
"Stability"; :func:`mmsparse.engine.stability.clip_unclipped`).
"""
from mmengine.logging import MMLogger

from mmsparse.core import DENSE
from .detector_call import batch_of, forward_mode, with_batch
from .distill import scale_loss

PREFIX = 'dense.'
# The clipping the joint step brings to configs with none (docs/training.md, "Stability").
CLIP_GRAD = dict(max_norm=10, norm_type=2)
CLIP_OPTIONS = ('max_norm', 'norm_type')


class JointDenseLoss:
    """Add the dense network's task losses to every sparse step of a detector.

    Args:
        model: The (unwrapped) MMDetection detector.
        network: Its :class:`~mmsparse.core.SparseNetwork`.
        weight: Factor of the dense losses (1.0: plain sum, as in the sandwich rule).
        split_batch: Feed the sparse pass the first part of each batch and the dense pass
            the rest (about the cost of one pass) instead of the whole batch to both.
            Needs a batch size of at least 2 per process; a single-image batch (an
            epoch's last) is fed whole to both passes.
        dense_share: With ``split_batch``, the fraction of each batch the dense pass gets
            (the sparse pass gets ``floor(n * (1 - dense_share))`` of ``n`` images, at least
            one for each pass); default 0.5.
        mean_losses: Weight each pass's losses by the share of the batch it saw (the same
            batch: 0.5 each), so the sum is a batch mean, the scale of plain training's
            loss; ``weight`` still multiplies the dense part. False (default): plain sum.
        clip_grad: Gradient clipping (``torch.nn.utils.clip_grad_norm_``'s ``max_norm`` and
            ``norm_type``) that :class:`mmsparse.SparseCocktailHook` gives an optimizer
            wrapper without its own ``clip_grad``; None: never add any.
    """

    def __init__(self, model, network, weight=1.0, split_batch=False, dense_share=0.5,
                 mean_losses=False, clip_grad=CLIP_GRAD):
        self.check_options(weight, split_batch, dense_share, mean_losses, clip_grad)
        self.clip_grad = None if clip_grad is None else dict(clip_grad)
        self.network, self.weight, self.split_batch = network, weight, split_batch
        self.dense_share, self.mean_losses = dense_share, mean_losses
        self._sparse_fraction = 0.5  # the sparse pass's share of the last batch
        self.enabled = False
        self._inside = False  # the dense pass re-enters the detector's forward
        self._dense_call = None  # split_batch: the dense pass's (args, kwargs)
        self._warned_single = False
        if split_batch:
            model.register_forward_pre_hook(self._split, with_kwargs=True)
        model.register_forward_hook(self._add_dense, with_kwargs=True)

    def step(self, spec):
        """Arm for the coming iteration: the dense pass only when a sparse subnet trains."""
        self.enabled = spec != DENSE

    @staticmethod
    def check_options(weight=1.0, split_batch=False, dense_share=0.5, mean_losses=False,
                      clip_grad=CLIP_GRAD):
        """Raise for bad options (an unknown one is a ``TypeError``), before any model."""
        if clip_grad is not None and not (
                isinstance(clip_grad, dict) and set(clip_grad) <= set(CLIP_OPTIONS)
                and isinstance(clip_grad.get('max_norm'), (int, float))
                and clip_grad['max_norm'] > 0):
            raise ValueError(f'joint dense loss clip_grad must be None or a dict with '
                             f'max_norm > 0 (and optionally norm_type), e.g. {CLIP_GRAD}, '
                             f'got {clip_grad!r}')
        if not weight > 0:
            raise ValueError(f'joint dense loss weight must be > 0, got {weight}')
        if not 0 < dense_share < 1:
            raise ValueError(f'joint dense loss dense_share must be in (0, 1), got '
                             f'{dense_share}')
        if dense_share != 0.5 and not split_batch:
            raise ValueError('joint dense loss dense_share needs split_batch=True')
        del mean_losses  # any value will do; named so that only a misspelling is an error

    def check_batch_size(self, batch_size):
        """Raise when ``split_batch`` can never give both passes an image (``batch_size``:
        images per batch and process, None when unknown)."""
        if self.split_batch and batch_size is not None and batch_size < 2:
            raise ValueError(f'joint dense loss with split_batch=True needs at least 2 images '
                             f'per batch and process, but train_dataloader.batch_size is '
                             f'{batch_size}: raise it, or set split_batch=False (both passes '
                             f'then see every image, at about twice the cost)')

    def describe(self):
        """The non-default options in words, for the training log ('' for none)."""
        notes = []
        if self.weight != 1.0:
            notes.append(f'dense weight {self.weight:g}')
        if self.split_batch:
            notes.append('split batch' + (f', dense share {self.dense_share}'
                                          if self.dense_share != 0.5 else ''))
        if self.mean_losses:
            notes.append('losses weighted by batch share')
        return ', '.join(notes)

    def _armed(self, args, kwargs):
        return self.enabled and not self._inside and forward_mode(args, kwargs) == 'loss'

    def _split(self, module, args, kwargs):
        if not self._armed(args, kwargs):
            return None
        inputs, samples = batch_of(args, kwargs)
        if len(samples) < 2:
            # A one-image batch (the last, partial batch of an epoch) cannot be split: both
            # passes see it, as with split_batch=False, rather than stop a long run.
            # A configured batch size of 1 is an error before training (check_batch_size).
            if not self._warned_single:
                MMLogger.get_current_instance().warning(
                    'mmsparse: joint dense loss with split_batch=True got a batch of '
                    f'{len(samples)} image(s): both passes see it (logged once)')
                self._warned_single = True
            self._sparse_fraction = 0.5
            self._dense_call = (args, kwargs)
            return None
        # the sparse pass's images, floored (so a share of 0.5 gives the dense pass the
        # larger half of an odd batch), at least one for each pass
        cut = min(max(int(len(samples) * (1 - self.dense_share)), 1), len(samples) - 1)
        self._sparse_fraction = cut / len(samples)
        self._dense_call = with_batch(args, kwargs, inputs[cut:], samples[cut:])
        return with_batch(args, kwargs, inputs[:cut], samples[:cut])

    def _add_dense(self, module, args, kwargs, output):
        if not self._armed(args, kwargs):
            return output
        if self.split_batch:
            (args, kwargs), self._dense_call = self._dense_call, None
        active = self.network.active
        self._inside = True
        self.network.set_active(DENSE)
        try:
            # MMDetection's loss forward copies the data samples it edits (the RPN's
            # class-agnostic labels), so the batch can be fed twice.
            dense = module(*args, **kwargs)
        finally:
            self._inside = False
            self.network.set_active(active)
        sparse_factor, dense_factor = ((self._sparse_fraction, 1 - self._sparse_fraction)
                                       if self.mean_losses else (1.0, 1.0))
        losses = _scaled(output, sparse_factor)
        losses.update(_scaled(dense, self.weight * dense_factor, PREFIX))
        return losses


def _scaled(losses, factor, prefix=''):
    """``losses`` with every ``*loss*`` entry times ``factor`` and keys prefixed."""
    return {prefix + key: scale_loss(value, factor) if 'loss' in key and factor != 1.0
            else value for key, value in losses.items()}


def dense_part(log_vars):
    """The summed dense losses among logged loss values (keys ``dense.*loss*``)."""
    return sum(float(v.detach()) if hasattr(v, 'detach') else float(v)
               for k, v in log_vars.items() if k.startswith(PREFIX) and 'loss' in k)
