"""Run an MMDetection detector once on a synthetic batch, for the core's graph analysis.

The core's dependency analysis and FLOP counting need ``run(model) -> outputs``. A loss
forward covers every head a detector has (RPN, RoI box and mask heads, dense heads), which
an inference forward does not (RPN objectness only ranks proposals there), so we build a
small batch with ground truth using MMDetection's own ``demo_mm_inputs``.
"""
import contextlib

import numpy as np
import torch
from mmdet.testing import demo_mm_inputs

from mmsparse.core import SparseNetwork, analyze_channels


@contextlib.contextmanager
def isolated_rng(seed=0):
    """Run with torch's and numpy's global RNGs seeded, then restore the caller's state.

    A loss forward samples anchors and RoIs from the global RNGs: seeding makes the analysis
    the same in every process (so every rank and every run selects the same layers), and
    restoring keeps the training's random stream untouched.
    """
    numpy_state = np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np.random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(numpy_state)


def detector_loss_run(image_size=(128, 128), num_items=3, with_mask=None):
    """A ``run(model)`` that returns the detector's loss dict on one synthetic image.

    Args:
        image_size: (H, W) of the synthetic image; small is enough, every stride must
            give a feature map of at least 1 pixel.
        num_items: Ground-truth objects in the image (all of class 0, valid for any head).
        with_mask: Include instance masks; default: when the model has a mask head.
    """
    def run(model):
        has_mask = getattr(model, 'with_mask', False) if with_mask is None else with_mask
        packed = demo_mm_inputs(batch_size=1, image_shapes=[(3, *image_size)],
                                num_items=[num_items], num_classes=2, with_mask=has_mask)
        for sample in packed['data_samples']:  # class 0 exists in every detector
            sample.gt_instances.labels.zero_()
        with isolated_rng():
            data = model.data_preprocessor(packed, True)
            return model.loss(data['inputs'], data['data_samples'])
    return run


def sparsify_detector(model, include=('*', ), exclude=(), image_size=(128, 128), **kwargs):
    """Make a :class:`~mmsparse.core.SparseNetwork` of an MMDetection detector."""
    return SparseNetwork(model, detector_loss_run(image_size), include=include,
                         exclude=exclude, **kwargs)


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


def sparsify_checkpoint_layers(model, names, channel_names=(), image_size=(128, 128)):
    """A :class:`~mmsparse.core.SparseNetwork` over the masked layers a checkpoint holds.

    Args:
        model: The detector the checkpoint will be loaded into.
        names: The checkpoint's masked layers (all are masked, stem and heads included).
        channel_names: Those holding channel masks. When one of them cannot remove channels
            on its own, the masks were made with ``channel_groups=True`` and the channel
            groups are analysed too.

    Raises:
        ValueError: a layer holds channel masks but its channels cannot be removed.
    """
    run = detector_loss_run(image_size)
    graph = analyze_channels(model, run)
    if any(n in graph.channels and not graph.channels[n].removable for n in channel_names):
        graph = analyze_channels(model, run, couple=True)
    network = SparseNetwork(model, run, include=names, sparsify_input_layers=True,
                            sparsify_output_layers=True, graph=graph)
    for name in channel_names:
        if name not in network.channel_layers:
            info = graph.channels.get(name)
            raise ValueError(f'the checkpoint holds channel masks for {name}, whose output '
                             'channels cannot be removed in this model'
                             + (f': {info.reason}' if info is not None else ''))
    return network
