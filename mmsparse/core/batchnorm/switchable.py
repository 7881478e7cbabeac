"""Switchable BatchNorm: one set of BN statistics and affine parameters per subnet.

Design (DDP-safe). mmengine wraps the model in DDP and builds the optimizer *before* hooks
run, so BN modules cannot be replaced nor parameters added. Instead every BatchNorm keeps its
parameters and names (``bn1.weight`` ...) as the *live* values of one subnet, and gets
buffers holding every subnet's copy, so checkpoints carry them:

* ``<bn>.switchable_weight`` / ``switchable_bias``: (K, C), the affine parameters per slot;
* ``<bn>.switchable_running_mean`` / ``switchable_running_var``: (K, C);
* ``<bn>.switchable_num_batches_tracked``: (K,);
* ``<bn>.switchable_index``: which slot the live values belong to.

Slot k holds the k-th of the switchable subnets in ``SparseNetwork.subnets()`` order, the
row order of the stored per-subnet statistics (:mod:`.stored_stats`); both make and copy
their rows with the helpers of :mod:`.recalibration`.

Switching to slot k copies the live values into the current slot and slot k into the live
parameters and buffers, in place (``.data.copy_``), so DDP and the optimizer keep seeing the
same tensors. :meth:`SwitchableBatchNorm.sync` copies the live values into their slot, so the
slot buffers are complete whenever it is called before a checkpoint is written.

Frozen BatchNorms (:func:`~.recalibration.frozen_batchnorms`) get no slots unless asked
(``include_frozen_bn``): they are shared by every subnet, as trained.

Optimizer state: the optimizer holds one state per BN *parameter* (e.g. SGD momentum), which
is therefore shared by the slots unless the caller swaps it; :class:`OptimizerStateSlots`
does that (mmsparse's AST hook uses it by default).

A checkpoint without the slot buffers (e.g. a stock MMDetection one) still loads: a load
pre-hook fills every slot with the checkpoint's live values.
"""
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from ..subnets import parse_subnet, parse_subnets
from .recalibration import add_rows, batchnorms, copy_all, live_tensor, row_views

SLOT_PREFIX = 'switchable_'
_SLOTTED = ('weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked')


def _slotted(bn):
    """The names of the parameters and buffers ``bn`` has, of those that get slots."""
    return [n for n in _SLOTTED if live_tensor(bn, n) is not None]


def add_slots(bn, num_slots):
    """Give ``bn`` ``num_slots`` slots, each a copy of its current values (slot 0 is live)."""
    if not isinstance(bn, _BatchNorm):
        raise TypeError(f'switchable BatchNorm needs a BatchNorm layer, got {type(bn).__name__}')
    if num_slots < 1:
        raise ValueError(f'switchable BatchNorm needs >= 1 slot, got {num_slots}')
    if hasattr(bn, SLOT_PREFIX + 'index'):
        raise ValueError(f'{type(bn).__name__} already has switchable slots')
    if not _slotted(bn):
        raise ValueError(f'{type(bn).__name__} has neither affine parameters nor running '
                         'statistics: nothing to switch')
    add_rows(bn, SLOT_PREFIX, _SLOTTED, num_slots)
    device = live_tensor(bn, _slotted(bn)[0]).device
    bn.register_buffer(SLOT_PREFIX + 'index', torch.zeros((), dtype=torch.int64, device=device))
    bn.register_load_state_dict_pre_hook(_fill_missing_slots)
    return bn


def num_slots(bn):
    return getattr(bn, SLOT_PREFIX + _slotted(bn)[0]).shape[0]


def _fill_missing_slots(module, state_dict, prefix, local_metadata, strict, missing_keys,
                        unexpected_keys, error_msgs):
    """Load pre-hook: a checkpoint without slots fills every slot with its live values;
    one with a different number of slots is an error naming the layer."""
    count = num_slots(module)
    if any(prefix + n in state_dict for n in [*_slotted(module), SLOT_PREFIX + 'index']):
        module._switchable_loaded = True  # the slots now come from a checkpoint
    if prefix + SLOT_PREFIX + 'index' not in state_dict:
        for name in _slotted(module):
            live = state_dict.get(prefix + name)
            if live is not None:
                state_dict[prefix + SLOT_PREFIX + name] = live.unsqueeze(0).repeat(
                    count, *([1] * live.dim()))
        if any(prefix + name in state_dict for name in _slotted(module)):
            state_dict[prefix + SLOT_PREFIX + 'index'] = torch.zeros((), dtype=torch.int64)
        return
    for name in _slotted(module):
        incoming = state_dict.get(prefix + SLOT_PREFIX + name)
        if incoming is not None and incoming.shape[0] != count:
            raise ValueError(f'{prefix.rstrip(".")}: the checkpoint holds {incoming.shape[0]} '
                             f'switchable BatchNorm slots, the model {count}')


class SwitchableBatchNorm:
    """Switchable BatchNorm over a model's BatchNorm layers, one slot per subnet.

    Args:
        model: The network (its BatchNorm layers get slot buffers, in place).
        names: The subnets that get a slot. Slots follow ``SparseNetwork.subnets()`` order
            (by pattern, then sparsity; the order of stored per-subnet statistics), whatever
            the order given. A subnet not listed (e.g. ``dense`` when only sparse subnets are
            trained) uses slot 0.
        exclude: BatchNorm module names to leave shared.
        include_frozen_bn: Give the frozen BatchNorms
            (:func:`~.recalibration.frozen_batchnorms`) slots too. Default: they stay
            shared, with the values they were loaded with; when every BatchNorm is frozen
            nothing switches.

    Raises:
        SubnetNameError: a name that is not a subnet name, or one listed twice.
        ValueError: the model has no BatchNorm layer.
    """

    def __init__(self, model, names, exclude=(), include_frozen_bn=False):
        self.names = [s.name for s in sorted(parse_subnets(names), key=lambda s: s.sort_key)]
        if not any(_slotted(m) for m in batchnorms(model).values()):
            raise ValueError('switchable BatchNorm: the model has no BatchNorm layer')
        self.norms = {n: m for n, m in batchnorms(model, include_frozen_bn).items()
                      if n not in set(exclude) and _slotted(m)}
        for bn in self.norms.values():
            add_slots(bn, len(self.names))

    def slot_of(self, name):
        name = parse_subnet(name).name
        return self.names.index(name) if name in self.names else 0

    @property
    def live_slot(self):
        if not self.norms:
            return 0  # nothing switches: every subnet uses the shared BatchNorms
        return int(getattr(next(iter(self.norms.values())), SLOT_PREFIX + 'index'))

    def _tensors(self, *slots):
        """The live tensors of every BN, and their views in each of ``slots``."""
        return row_views(self.norms.values(), SLOT_PREFIX, _SLOTTED, *slots)

    @torch.no_grad()
    def activate(self, name):
        """Make subnet ``name``'s BatchNorm live; returns (previous slot, new slot).

        The live values go to the previous slot and the new slot's become live, in place,
        with one batched copy per direction (a few kernel launches instead of hundreds per
        switch on a GPU).
        """
        index = self.slot_of(name)
        previous = self.live_slot
        if index != previous:
            live, (outgoing, incoming) = self._tensors(previous, index)
            copy_all(outgoing, live)
            copy_all(live, incoming)
            for bn in self.norms.values():
                getattr(bn, SLOT_PREFIX + 'index').fill_(index)
        return previous, index

    @property
    def loaded(self):
        """True when every BatchNorm's slots were loaded from a checkpoint."""
        return all(getattr(bn, '_switchable_loaded', False) for bn in self.norms.values())

    @torch.no_grad()
    def fill_from_live(self):
        """Copy the live values into *every* slot of the BatchNorms not loaded from a
        checkpoint (a fresh run): the slots are created before the model's weight
        initialisation (mmengine calls ``before_run`` hooks first), so without this every
        slot but the live one would keep PyTorch's default BN values instead of the
        model's initialisation (e.g. MMDetection ResNet's zero-initialised last BN of each
        residual block). Returns how many BatchNorms were filled."""
        filled = 0
        for bn in self.norms.values():
            if getattr(bn, '_switchable_loaded', False):
                continue
            for name in _slotted(bn):
                slots = getattr(bn, SLOT_PREFIX + name)
                slots.copy_(live_tensor(bn, name).unsqueeze(0).expand_as(slots))
            filled += 1
        return filled

    @torch.no_grad()
    def sync(self):
        """Copy the live values into their slot (cheap enough to do every iteration)."""
        live, (current, ) = self._tensors(self.live_slot)
        copy_all(current, live)

    def parameters(self):
        """The live BN parameters, in a fixed order (for :class:`OptimizerStateSlots`)."""
        return [p for bn in self.norms.values() for p in bn.parameters(recurse=False)]


class OptimizerStateSlots:
    """Per-slot optimizer state of the BN parameters (e.g. SGD momentum), swapped on switch.

    The optimizer keeps one state per parameter; with switchable BN the live BN parameters
    belong to different subnets over time, so their momentum would mix subnets. This stashes
    the outgoing slot's state and restores the incoming slot's (a slot never trained starts
    from an empty state, as a fresh optimizer would).

    Args:
        optimizer: A ``torch.optim.Optimizer``.
        params: The live BN parameters (:meth:`SwitchableBatchNorm.parameters`).
    """

    def __init__(self, optimizer, params):
        self.optimizer = optimizer
        self.params = list(params)
        self.stash = {}  # slot -> [state dict of each param]

    @torch.no_grad()
    def swap(self, previous, index):
        if previous == index:
            return
        state = self.optimizer.state
        # Moving the state dicts is enough: the optimizer updates the live ones in place and
        # never touches a stashed one.
        self.stash[previous] = [state.pop(p, {}) for p in self.params]
        incoming = self.stash.pop(index, None)
        for i, param in enumerate(self.params):
            if incoming is None or not incoming[i]:
                state.pop(param, None)
            else:
                state[param] = incoming[i]

    def state_dict(self):
        """Tensors and plain containers only (loads with ``weights_only=True``)."""
        return {int(k): v for k, v in self.stash.items()}

    def load_state_dict(self, stash):
        self.stash = {int(k): v for k, v in stash.items()}
