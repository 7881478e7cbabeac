"""Attach mmsparse's masked layers to the Runner's model (train and test)."""
from mmengine.hooks import Hook
from mmengine.runner import BaseLoop

from mmsparse.core import (DENSE, MaskSpec, check_selection, generate_masks, is_mask_key,
                           parse_subnets)
from mmsparse.core.batchnorm.stored_stats import drop_stored_bn_stats, stored_bn_count
from mmsparse.core.subnets import cocktail_subnets
from mmsparse.models import attach_network, attached_network, sparsify_detector
from mmsparse.registry import HOOKS

from ..network import unwrap
from ..sparse_checkpoint import (checkpoint_network, checkpoint_state, checkpoint_subnet_names,
                                 holds_masks, register_checkpoint_bn_stats)

SUBNET_SETS = {'cocktail': cocktail_subnets}


def _glob_list(value, option):
    """``include``/``exclude``: a list or tuple of glob strings (a bare string would be split
    into one-character globs)."""
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(
            isinstance(v, str) and v for v in value):
        raise ValueError(f'SparseSubnetsHook: {option} must be a list of layer-name globs '
                         f"(non-empty strings), e.g. ['backbone.*'], got {value!r}")
    return tuple(value)


def _check_flag(value, option):
    if not isinstance(value, bool):
        raise ValueError(f'SparseSubnetsHook: {option} must be True or False, got {value!r}')
    return value


def _sparse_names(names):
    return sorted(n for n in names if n != DENSE.name)


@HOOKS.register_module()
class SparseSubnetsHook(Hook):
    """Turn the model's chosen layers into masked layers holding ``subnets``.

    Runs at ``before_run``, i.e. before mmengine loads or resumes a checkpoint, so the mask
    buffers exist and load with it. In training, masks are generated from the weights at
    ``before_train`` when the loaded checkpoint held none.

    A checkpoint whose masks hold other subnets than ``subnets``: ``--resume`` fails naming
    both lists (resuming continues the same run); ``load_from`` starts new masks for
    ``subnets`` from its weights, with a warning. ``before_train`` also checks, before the
    first iteration, that a :class:`~mmsparse.engine.runner.SubnetValLoop`'s subnets are
    held by the model.

    Args:
        subnets: Subnet names, or ``'cocktail'`` for the 24 Sparse Cocktail subnets. None:
            take the masked layers from the checkpoint being loaded (``load_from``), as
            ``tools/test.py`` does; a checkpoint without masks leaves the model dense.
        include, exclude, sparsify_input_layers, sparsify_output_layers: layer selection
            (see :func:`mmsparse.core.select_layers`).
        mask_spec: kwargs of :class:`mmsparse.core.MaskSpec`.
        analysis_image_size: (H, W) of the synthetic image for dependency analysis.
        channel_groups: Let channel subnets also remove the channels that several layers
            share, keeping them equal across the group: ResNet's residual streams and the
            FPN's outputs (with them RoIAlign and the heads' inputs shrink). Default False.
    """

    priority = 'VERY_HIGH'

    def __init__(self, subnets=None, include=('*', ), exclude=(), sparsify_input_layers=False,
                 sparsify_output_layers=False, mask_spec=None, analysis_image_size=(128, 128),
                 channel_groups=False):
        if isinstance(subnets, str):
            if subnets not in SUBNET_SETS:
                raise ValueError(f'unknown subnet set {subnets!r}; known: {sorted(SUBNET_SETS)}'
                                 ' (or give a list of subnet names)')
            subnets = SUBNET_SETS[subnets]()
        if subnets is not None and not isinstance(subnets, (list, tuple)):
            raise ValueError(f'SparseSubnetsHook: subnets must be a list of subnet names, a '
                             f'subnet set ({sorted(SUBNET_SETS)}) or None, got {subnets!r}')
        self.subnets = None if subnets is None else parse_subnets(subnets)
        if self.subnets is not None and all(s == DENSE for s in self.subnets):
            raise ValueError(f'SparseSubnetsHook: subnets={list(subnets)!r} lists no sparse '
                             "subnet; name some, e.g. ['unstructured@0.50', 'nm@2:4'], or "
                             'remove the hook to train a dense model')
        self.include = _glob_list(include, 'include')
        self.exclude = _glob_list(exclude, 'exclude')
        if not self.include:
            raise ValueError("SparseSubnetsHook: include is empty (no layer would be masked); "
                             "use ['*'] for every maskable layer")
        self.sparsify_input_layers = _check_flag(sparsify_input_layers, 'sparsify_input_layers')
        self.sparsify_output_layers = _check_flag(sparsify_output_layers,
                                                  'sparsify_output_layers')
        if mask_spec is not None and not isinstance(mask_spec, dict):
            raise ValueError(f'SparseSubnetsHook: mask_spec must be a dict of MaskSpec options, '
                             f'got {mask_spec!r}')
        try:
            self.mask_spec = MaskSpec(**(mask_spec or {}))
        except TypeError as err:  # an unknown option
            raise ValueError(f'SparseSubnetsHook: bad mask_spec {mask_spec!r}: {err}; options: '
                             'unstructured_scope, channel_score, block_shape') from None
        size = analysis_image_size
        if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
            raise ValueError('SparseSubnetsHook: analysis_image_size must be (H, W), two '
                             f'positive ints, got {size!r}')
        self.analysis_image_size = tuple(size)
        self.channel_groups = _check_flag(channel_groups, 'channel_groups')

    def before_run(self, runner):
        model = unwrap(runner.model)
        if attached_network(model) is not None:
            return
        if self.subnets is not None:
            network = sparsify_detector(model, self.include, self.exclude,
                                        self.analysis_image_size,
                                        sparsify_input_layers=self.sparsify_input_layers,
                                        sparsify_output_layers=self.sparsify_output_layers,
                                        channel_groups=self.channel_groups)
            check_selection(network, self.subnets, self.mask_spec.block_shape)
            if runner.cfg.get('load_from'):  # e.g. tools/test.py with a training config
                register_checkpoint_bn_stats(model, checkpoint_state(runner.cfg.load_from))
        else:
            load_from = runner.cfg.get('load_from')
            network = (checkpoint_network(model, load_from, self.analysis_image_size)
                       if load_from else None)
            if network is None:
                runner.logger.info('mmsparse: the checkpoint holds no masks; only the dense '
                                   'network can be evaluated')
                return
        attach_network(model, network)
        runner.logger.info(f'mmsparse: {len(network.layers)} masked layers '
                           f'({len(network.channel_layers)} with removable channels)')

    def after_load_checkpoint(self, runner, checkpoint):
        """Before the checkpoint's weights load: compare its subnets with ``subnets``."""
        state = checkpoint.get('state_dict', checkpoint)
        training = isinstance(getattr(runner, '_train_loop', None), BaseLoop)
        if self.subnets is None or not training or not isinstance(state, dict):
            return  # tools/test.py evaluates the subnets the checkpoint holds
        held = _sparse_names(checkpoint_subnet_names(state))
        wanted = _sparse_names(s.name for s in self.subnets)
        if not held or held == wanted:
            return
        if getattr(runner, '_resume', False):
            raise ValueError(
                'mmsparse: cannot resume: the checkpoint holds masks for the subnets '
                f'[{", ".join(held)}], but the config\'s SparseSubnetsHook lists '
                f'[{", ".join(wanted)}]. Resuming continues the same run, with its subnets: '
                'set the config\'s subnets to the checkpoint\'s, or start a new run from its '
                'weights with load_from=<checkpoint> (without --resume) to generate masks for '
                'the config\'s subnets.')
        # load_from: a new run from these weights; the config's subnets get new masks.
        for key in [k for k in state if is_mask_key(k)]:
            del state[key]
        runner.logger.warning(
            f'mmsparse: the loaded checkpoint holds masks for [{", ".join(held)}], the config '
            f'lists [{", ".join(wanted)}]: its masks are not loaded; new masks for the '
            'config\'s subnets are generated from its weights')

    def check_val_subnets(self, runner, network):
        """Fail now, not after the first epoch, on validation subnets the model lacks."""
        loop = getattr(runner, 'val_loop', None)  # built by Runner.train before before_run
        if loop is not None and hasattr(loop, 'check_subnets'):
            loop.check_subnets(network)

    def before_train(self, runner):
        network = attached_network(unwrap(runner.model))
        if network is None:
            self.check_val_subnets(runner, None)
            return
        if stored_bn_count(network.model):
            # Training changes the weights the loaded statistics were estimated for.
            drop_stored_bn_stats(network.model)
            runner.logger.info('mmsparse: dropped the checkpoint\'s stored per-subnet '
                               'BatchNorm statistics (training makes them stale)')
        if hasattr(runner.optim_wrapper, 'masked_params'):  # mmsparse's wrappers
            runner.optim_wrapper.masked_params = {layer.dense_weight: layer
                                                  for layer in network.layers.values()}
        if self.subnets is not None and not holds_masks(network):
            generate_masks(network, self.subnets, self.mask_spec)
            runner.logger.info('mmsparse: generated masks for '
                               f'{", ".join(s.name for s in network.subnets())}')
        self.check_val_subnets(runner, network)
