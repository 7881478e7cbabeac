"""Run an MMDetection detector once on a synthetic batch, for the core's graph analysis.

The core's dependency analysis and FLOP counting need ``run(model) -> outputs``. A loss
forward covers every head a detector has (RPN, RoI box and mask heads, dense heads), which
an inference forward does not (RPN objectness only ranks proposals there), so we build a
small batch with ground truth using MMDetection's own ``demo_mm_inputs``.

The batch carries the ground truth the losses need: boxes, instance masks whenever a head
has a mask loss (a mask head, or the box head itself as in RTMDet-Ins, CondInst, SOLO), and
a semantic map for semantic branches (HTC).
The forward runs the heads in training mode, as training does (YOLACT computes its
semantic branch only then), with BatchNorm and dropout in eval mode, so no statistic moves.
A model this cannot run gets an :class:`AnalysisError` naming it and the failing step; a
custom ``run`` can then be given to :func:`sparsify_detector`.
"""
import contextlib
import logging

import numpy as np
import torch
from mmdet.testing import demo_mm_inputs
from mmengine.logging import MMLogger
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from mmsparse.core import SparseNetwork, analyze_channels


class AnalysisError(RuntimeError):
    """The synthetic forward that the channel analysis needs failed on this model."""


class _ToRunnerLog(logging.Handler):
    """Route the core's ``mmsparse`` log records (e.g. the layers kept dense for N:M) to
    mmengine's current logger, so they reach the run's log file."""

    def emit(self, record):
        MMLogger.get_current_instance().log(record.levelno, f'mmsparse: {record.getMessage()}')


_CORE_LOG = logging.getLogger('mmsparse')
if not any(isinstance(h, _ToRunnerLog) for h in _CORE_LOG.handlers):
    _CORE_LOG.addHandler(_ToRunnerLog())
    _CORE_LOG.setLevel(logging.INFO)
    _CORE_LOG.propagate = False


@contextlib.contextmanager
def isolated_rng(seed=0):
    """Run with torch's and numpy's global RNGs seeded, then restore the caller's state.

    A loss forward samples anchors and RoIs from the global RNGs: seeding makes the analysis
    the same in every process (so every rank and every run selects the same layers), and
    restoring keeps the training's random stream untouched.
    """
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    numpy_state = np.random.get_state()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        np.random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(numpy_state)


def _is_stochastic(module):
    """Layers whose training mode changes statistics or draws random numbers."""
    return isinstance(module, (_BatchNorm, nn.modules.dropout._DropoutNd)) or (
        'Drop' in type(module).__name__)  # MMCV's DropPath, DropBlock


@contextlib.contextmanager
def heads_in_training_mode(model):
    """Training mode for the model's own logic, eval mode for BatchNorm and dropout.

    The caller's modes and ``requires_grad`` flags (which ``train()`` may change, e.g. a
    ResNet's ``frozen_stages``) are restored afterwards.
    """
    modes = {m: m.training for m in model.modules()}
    grads = {p: p.requires_grad for p in model.parameters()}
    try:
        model.train()
        for module in model.modules():
            if _is_stochastic(module):
                module.eval()
        for param, flag in grads.items():
            param.requires_grad_(flag)
        yield
    finally:
        for module, mode in modes.items():
            module.training = mode
        for param, flag in grads.items():
            param.requires_grad_(flag)


def needs_masks(model):
    """Whether ``model``'s losses need instance masks: a mask head, or a head with a mask
    loss of its own (RTMDet-Ins, CondInst, SOLO compute masks in the box head)."""
    return bool(getattr(model, 'with_mask', False)) or any(
        hasattr(m, 'loss_mask') for m in model.modules())


def detector_loss_run(image_size=(128, 128), num_items=3, with_mask=None, with_semantic=None):
    """A ``run(model)`` that returns the detector's loss dict on one synthetic image.

    Args:
        image_size: (H, W) of the synthetic image; small is enough, every stride must
            give a feature map of at least 1 pixel.
        num_items: Ground-truth objects in the image (all of class 0, valid for any head).
        with_mask: Include instance masks; default: when :func:`needs_masks`.
        with_semantic: Include a semantic map; default: when the model has a semantic
            branch (``with_semantic``, e.g. HTC).

    Raises:
        AnalysisError: the loss forward failed, naming the model and the error.
    """
    def run(model):
        masks = needs_masks(model) if with_mask is None else with_mask
        semantic = (bool(getattr(model, 'with_semantic', False)) if with_semantic is None
                    else with_semantic)
        packed = demo_mm_inputs(batch_size=1, image_shapes=[(3, *image_size)],
                                num_items=[num_items], num_classes=2, with_mask=masks,
                                with_semantic=semantic)
        for sample in packed['data_samples']:  # class 0 exists in every detector
            sample.gt_instances.labels.zero_()
        with isolated_rng(), heads_in_training_mode(model):
            try:
                data = model.data_preprocessor(packed, True)
                return model.loss(data['inputs'], data['data_samples'])
            except Exception as err:
                truth = ', '.join(['boxes'] + ['masks'] * masks + ['a semantic map'] * semantic)
                raise AnalysisError(
                    f'the channel analysis runs {type(model).__name__}.loss once on a '
                    f'synthetic {image_size[0]}x{image_size[1]} image with {truth}, and it '
                    f'failed: {type(err).__name__}: {err}. Give sparsify_detector a '
                    'run(model) that returns this model\'s losses (or outputs) for a batch it '
                    'accepts') from err
    return run


def sparsify_detector(model, include=('*', ), exclude=(), image_size=(128, 128), run=None,
                      **kwargs):
    """Make a :class:`~mmsparse.core.SparseNetwork` of an MMDetection detector.

    Args:
        model: The detector (modified in place).
        include / exclude / kwargs: see :class:`~mmsparse.core.SparseNetwork`.
        image_size: (H, W) of the analysis forward's synthetic image.
        run: A custom ``run(model) -> outputs`` for the analysis, for a detector that
            :func:`detector_loss_run` cannot run (default: that run at ``image_size``).
    """
    run = detector_loss_run(image_size) if run is None else run
    return SparseNetwork(model, run, include=include, exclude=exclude, **kwargs)


def detector_predict_run(data_batch):
    """A ``run(model)`` doing inference on a real (collated) data batch.

    Used to count FLOPs with the test-time number of proposals and the real image size.
    """
    def run(model):
        data = model.data_preprocessor(data_batch, False)
        return model.predict(data['inputs'], data['data_samples'])
    return run


def attached_network(model):
    """The :class:`~mmsparse.core.SparseNetwork` attached to ``model`` (unwrapped), or None."""
    return getattr(model, '_mmsparse_network', None)


def attach_network(model, network):
    """Remember ``network`` on the (unwrapped) model so loops and hooks can find it."""
    object.__setattr__(model, '_mmsparse_network', network)  # not a submodule
    return network


def sparsify_checkpoint_layers(model, names, channel_names=(), image_size=(128, 128),
                               run=None):
    """A :class:`~mmsparse.core.SparseNetwork` over the masked layers a checkpoint holds.

    Args:
        model: The detector the checkpoint will be loaded into.
        names: The checkpoint's masked layers (all are masked, stem, heads and frozen
            layers included).
        channel_names: Those holding channel masks. When one of them cannot remove channels
            on its own, the masks were made with ``channel_groups=True`` and the channel
            groups are analysed too.
        run: A custom analysis run (see :func:`sparsify_detector`).

    Raises:
        ValueError: a layer holds channel masks but its channels cannot be removed.
    """
    run = detector_loss_run(image_size) if run is None else run
    graph = analyze_channels(model, run)
    if any(n in graph.channels and not graph.channels[n].removable for n in channel_names):
        graph = analyze_channels(model, run, couple=True)
    # The checkpoint decides: frozen layers it masked (sparsify_frozen_layers) are masked.
    network = SparseNetwork(model, run, include=names, sparsify_input_layers=True,
                            sparsify_output_layers=True, graph=graph,
                            sparsify_frozen_layers=True)
    for name in channel_names:
        if name not in network.channel_layers:
            info = graph.channels.get(name)
            raise ValueError(f'the checkpoint holds channel masks for {name}, whose output '
                             'channels cannot be removed in this model'
                             + (f': {info.reason}' if info is not None else ''))
    return network
