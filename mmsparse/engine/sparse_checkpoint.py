"""Read mmsparse checkpoints: the masked layers and stored statistics they hold, and a
detector loaded from one outside a Runner (for the tools that edit or export it)."""
import os.path as osp
import pickle
import zipfile

import torch
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from mmdet.registry import MODELS
from mmengine.config import Config
from mmengine.runner import CheckpointLoader

from mmsparse.core import DENSE, is_mask_key
from mmsparse.core.subnets import SubnetSpec
from mmsparse.core.batchnorm.stored_stats import PREFIX as STORED_BN_PREFIX
from mmsparse.core.batchnorm.stored_stats import register_stored_bn_stats
from mmsparse.core.batchnorm.switchable import SLOT_PREFIX as SWITCHABLE_PREFIX
from mmsparse.models import attach_network, sparsify_checkpoint_layers
from .config_options import merge_cfg_options


def masked_layer_names(state_dict):
    """Names of the masked layers in a state dict; empty if it holds no subnet's mask.

    Every masked layer has all mask buffers (possibly empty for some patterns), so layers
    are found by the buffers' presence and the checkpoint "holds masks" when any is filled.
    """
    names = sorted(k[:-len('.mask_unstructured_ratios')] for k in state_dict
                   if k.endswith('.mask_unstructured_ratios'))
    filled = any(v.numel() > 0 for k, v in state_dict.items()
                 if is_mask_key(k) and (k.endswith('_ratios') or k.endswith('_nm_nm')))
    return names if filled else []


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or that does not fit the config's model."""


def load_checkpoint_file(path, mmap=True):
    """``torch.load`` of a checkpoint (``weights_only``, on the CPU), with a clear error.

    Files in torch's zip format are memory-mapped (``mmap``), so only what the caller reads
    comes off the disk. Files in the legacy format (``torch.save(...,
    _use_new_zipfile_serialization=False)``, e.g. MMDetection model-zoo files written by
    torch < 1.6) cannot be memory-mapped and are read whole.

    Raises:
        FileNotFoundError: naming the path.
        CheckpointError: for a truncated or foreign file, naming the path.
    """
    path = str(path)
    if not osp.isfile(path):
        raise FileNotFoundError(f'checkpoint {path!r} does not exist')
    zipped = zipfile.is_zipfile(path)
    try:
        return torch.load(path, map_location='cpu', weights_only=True, mmap=mmap and zipped)
    except pickle.UnpicklingError as err:
        if 'weights_only' in str(err):  # readable, but holds objects the allow-list refuses
            raise
        raise CheckpointError(_unreadable(path, err)) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(_unreadable(path, err)) from None


def _unreadable(path, err):
    size = osp.getsize(path)
    return (f'cannot read checkpoint {path!r} ({size} bytes): it is truncated (an interrupted '
            'copy or download?) or not a PyTorch checkpoint. Copy it again or pick another '
            f'file. (torch: {str(err).splitlines()[0] if str(err) else type(err).__name__})')


def read_checkpoint(path):
    """The state dict and meta dict of checkpoint ``path`` (see ``load_checkpoint_file``):
    memory-mapped when the file allows it, so only what the caller reads (key names, the
    small ratio buffers) comes off the disk.

    A checkpoint saved from a DDP-wrapped model (not by mmengine, which unwraps it) has
    every key prefixed ``module.``; the prefix is removed, as mmengine's loader does, so
    its masked layers are found under the model's own names.
    """
    checkpoint = load_checkpoint_file(path)
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f'checkpoint {str(path)!r} holds a {type(checkpoint).__name__}, '
                              'not a state dict (a pickled model? mmsparse reads the '
                              'checkpoints training writes, with their mask buffers)')
    state = checkpoint.get('state_dict', checkpoint)
    consume_prefix_in_state_dict_if_present(state, 'module.')
    return state, checkpoint.get('meta', {})


def _own_buffer(key):
    """mmsparse's own buffers (masks, stored and switchable BatchNorm statistics), which a
    model gets only once its hooks have run."""
    return is_mask_key(key) or key.rsplit('.', 1)[-1].startswith((STORED_BN_PREFIX,
                                                                   SWITCHABLE_PREFIX))


def check_model_fits(model_state, state, path, what="the config's model"):
    """Raise when checkpoint ``state`` lacks weights of ``model_state`` or holds them with
    another shape (a checkpoint of another architecture): mmengine's non-strict loading
    would only warn and leave random weights.

    mmsparse's mask buffers and stored or switchable BatchNorm statistics are ignored (the
    model may not have them yet). Keys only the checkpoint holds are allowed.

    Args:
        model_state: The model's state dict (or any ``{key: tensor}``).
        state: The checkpoint's state dict (``read_checkpoint``).
        path: The checkpoint's path, for the message.

    Raises:
        CheckpointError: naming how many weights are missing or mismatched, and a few keys.
    """
    expected = {k: v for k, v in model_state.items() if not _own_buffer(k)}
    missing = [k for k in expected if k not in state]
    mismatched = [k for k in expected if k in state and hasattr(state[k], 'shape')
                  and tuple(state[k].shape) != tuple(expected[k].shape)]
    if not missing and not mismatched:
        return
    parts = []
    if missing:
        parts.append(f'{len(missing)} of {len(expected)} weights missing (e.g. '
                     f'{", ".join(missing[:3])})')
    if mismatched:
        shown = ', '.join(f'{k}: checkpoint {tuple(state[k].shape)}, model '
                          f'{tuple(expected[k].shape)}' for k in mismatched[:3])
        parts.append(f'{len(mismatched)} with another shape (e.g. {shown})')
    raise CheckpointError(f'checkpoint {str(path)!r} does not fit {what}: '
                          f'{"; ".join(parts)}. Is it a checkpoint of another model? Pass '
                          'the config it was trained with.')


def checkpoint_subnet_names(state):
    """The subnet names a checkpoint state dict holds masks for, ``dense`` first, read
    from the masked layers' ratio buffers (no model needed)."""
    specs = {DENSE}
    for key, value in state.items():
        if key.endswith('.mask_nm_nm'):
            specs.update(SubnetSpec('nm', n=int(n), m=int(m)) for n, m in value.tolist())
        for pattern in ('unstructured', 'block', 'channel'):
            if key.endswith(f'.mask_{pattern}_ratios'):
                specs.update(SubnetSpec(pattern, round(float(r), 6)) for r in value.tolist())
    return [s.name for s in sorted(specs, key=lambda s: s.sort_key)]


def reconcile_checkpoint_subnets(state, subnets, resume):
    """Compare the subnets a training checkpoint's masks hold with the config's ``subnets``.

    Resuming continues the same run, so different subnets are an error naming both lists.
    ``load_from`` starts a new run from the checkpoint's weights: its masks are removed from
    ``state`` (in place) so that masks for ``subnets`` are generated from those weights.

    Returns:
        The checkpoint's sparse subnet names when its masks were removed, else [].
    """
    held = sorted(n for n in checkpoint_subnet_names(state) if n != DENSE.name)
    wanted = sorted(s.name for s in subnets if s != DENSE)
    if not held or held == wanted:
        return []
    if resume:
        raise ValueError(
            'mmsparse: cannot resume: the checkpoint holds masks for the subnets '
            f'[{", ".join(held)}], but the config\'s SparseSubnetsHook lists '
            f'[{", ".join(wanted)}]. Resuming continues the same run, with its subnets: '
            'set the config\'s subnets to the checkpoint\'s, or start a new run from its '
            'weights with load_from=<checkpoint> (without --resume) to generate masks for '
            'the config\'s subnets.')
    for key in [k for k in state if is_mask_key(k)]:
        del state[key]
    return held


def check_checkpoint_layers(state, network, subnets):
    """Fail when a checkpoint holding masks for the config's ``subnets`` masks other layers
    than the config selects (e.g. it was trained with other include/exclude globs or with
    ``sparsify_frozen_layers``): mmengine would drop the masks of the layers the config
    leaves dense, silently, and evaluate other subnets than were trained."""
    held = masked_layer_names(state)
    # A module reachable under several names (RTMDet's convs shared across levels) has its
    # masks in the state dict under each of them.
    masked = set(map(id, network.layers.values()))
    selected = {name for name, module in network.model.named_modules(remove_duplicate=False)
                if id(module) in masked}
    same_subnets = (sorted(checkpoint_subnet_names(state))
                    == sorted({DENSE.name, *(s.name for s in subnets)}))
    if not held or not same_subnets or set(held) == selected:
        return
    only_ckpt = sorted(set(held) - selected)
    only_cfg = sorted(selected - set(held))
    raise ValueError(
        'mmsparse: the checkpoint masks other layers than the config selects: '
        f'{len(only_ckpt)} only in the checkpoint (e.g. {", ".join(only_ckpt[:3]) or "-"}), '
        f'{len(only_cfg)} only in the config (e.g. {", ".join(only_cfg[:3]) or "-"}). '
        'Use the config the checkpoint was trained with (its SparseSubnetsHook options: '
        'include, exclude, sparsify_*_layers), or set SparseSubnetsHook(subnets=None) to '
        'take the masked layers from the checkpoint.')


def checkpoint_state(path):
    """The state dict of checkpoint ``path`` (see ``read_checkpoint``)."""
    return read_checkpoint(path)[0]


def load_from_state(load_from):
    """The state dict of a Runner's ``load_from``: a local file (``checkpoint_state``) or a
    URL (``https://``, e.g. MMDetection's model zoo, ``torchvision://``, ...).

    mmsparse's hooks read the checkpoint at ``before_run``, before mmengine loads it, and
    the local reader cannot open a URL: mmengine's loader fetches it (rank 0 downloads, into
    torch's hub cache, where mmengine's own loading then finds it without a second
    download). The DDP ``module.`` prefix, if any, is removed, as ``read_checkpoint`` does.
    """
    if '://' not in str(load_from):
        return checkpoint_state(load_from)
    checkpoint = CheckpointLoader.load_checkpoint(str(load_from), map_location='cpu')
    state = checkpoint.get('state_dict', checkpoint)
    consume_prefix_in_state_dict_if_present(state, 'module.')
    return state


def checkpoint_network(model, checkpoint, image_size=(128, 128)):
    """A SparseNetwork of ``model`` over the masked layers a checkpoint holds (stem and
    heads included, channel groups if its channel masks need them); None if it holds no
    masks. When the checkpoint stores per-subnet BatchNorm statistics, ``model`` gets the
    buffers that load them.

    Args:
        checkpoint: The checkpoint's path, or its state dict when the caller has read it.
    """
    state = checkpoint if isinstance(checkpoint, dict) else checkpoint_state(checkpoint)
    names = masked_layer_names(state)
    if not names:
        return None
    channel = [n for n in names if state[f'{n}.mask_channel_ratios'].numel()]
    network = sparsify_checkpoint_layers(model, names, channel, image_size)
    register_checkpoint_bn_stats(model, state)
    return network


def register_checkpoint_bn_stats(model, state):
    """Give ``model`` the buffers that load a checkpoint state dict's stored per-subnet
    BatchNorm statistics, when it holds some (otherwise they would be dropped as
    unexpected keys)."""
    suffix = '.' + STORED_BN_PREFIX + 'running_mean'
    stored = {k[:-len(suffix)]: v.shape[0] for k, v in state.items() if k.endswith(suffix)}
    if stored:  # the BatchNorms the checkpoint stores (frozen ones only if it was asked to)
        register_stored_bn_stats(model, next(iter(stored.values())), names=list(stored))


def holds_masks(network):
    return any(s.name != 'dense' for s in network.subnets())


def tool_config(args):
    """The config of a tool taking ``config``, ``checkpoint`` and ``--cfg-options``, after
    checking that the checkpoint exists (before anything slow is built)."""
    cfg = Config.fromfile(args.config)
    if args.cfg_options is not None:
        merge_cfg_options(cfg, args.cfg_options)  # named hook options reach custom_hooks
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
        CheckpointError: the checkpoint lacks weights of the config's model or holds them
            with other shapes (another model; see ``check_model_fits``).
    """
    model = MODELS.build(cfg.model)
    # Read once; the DDP 'module.' prefix, if any, is already removed.
    state, meta = read_checkpoint(checkpoint)
    network = checkpoint_network(model, state, analysis_image_size(cfg))
    if network is not None:
        attach_network(model, network)
    check_model_fits(model.state_dict(), state, checkpoint)
    model.load_state_dict(state, strict=False)
    model.eval()
    return model, network, meta
