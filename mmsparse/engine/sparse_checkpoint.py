"""Load an mmsparse checkpoint outside a Runner (for the tools that edit or export it)."""
import os.path as osp

from mmdet.registry import MODELS
from mmengine.config import Config

from mmsparse.models import attach_network

from .hooks.sparse_subnets_hook import checkpoint_network, read_checkpoint


def tool_config(args):
    """The config of a tool taking ``config``, ``checkpoint`` and ``--cfg-options``, after
    checking that the checkpoint exists (before anything slow is built)."""
    cfg = Config.fromfile(args.config)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if not osp.isfile(args.checkpoint):
        raise FileNotFoundError(f'checkpoint {args.checkpoint!r} does not exist')
    return cfg


def analysis_image_size(cfg):
    """The SparseSubnetsHook's analysis image size in the config, or its default."""
    for hook in cfg.get('custom_hooks', None) or []:
        if 'SparseSubnetsHook' in str(hook.get('type', '')):
            return tuple(hook.get('analysis_image_size', (128, 128)))
    return (128, 128)


def load_sparse_detector(cfg, checkpoint):
    """The config's detector with the checkpoint's weights and, when it holds masks, its
    SparseNetwork (masked layers and stored BatchNorm statistics attached as
    ``tools/test.py``'s SparseSubnetsHook does, and remembered on the model), in eval mode.

    Returns:
        (model, network or None, the checkpoint's meta dict).

    Raises:
        ValueError: the checkpoint lacks keys of the config's model (another model). mmengine
            would only warn, and the tool would then run on random weights.
    """
    model = MODELS.build(cfg.model)
    # Read once; the DDP 'module.' prefix, if any, is already removed.
    state, meta = read_checkpoint(checkpoint)
    network = checkpoint_network(model, state, analysis_image_size(cfg))
    if network is not None:
        attach_network(model, network)
    missing, _ = model.load_state_dict(state, strict=False)
    if missing:
        raise ValueError(f'checkpoint {checkpoint!r} does not fit the config\'s model: '
                         f'{len(missing)} keys missing, e.g. {", ".join(missing[:3])}')
    model.eval()
    return model, network, meta
