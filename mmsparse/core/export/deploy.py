"""Torch-only pieces of exporting a subnet: what to measure, what to keep, 2:4 conversion.

The tool (``tools/export_subnet.py``) builds the detector and writes the files; everything
here works on plain ``nn.Module`` s (the output of :mod:`.slimming`).
"""
import torch
from torch import nn

SEMI_STRUCTURED_HELP = (
    '--semi-structured needs a CUDA GPU with semi-structured (2:4) sparse support (compute '
    'capability 8.0+, e.g. A100/H100) and an nm@2:4 subnet')


class ExportError(ValueError):
    """An export request that cannot be fulfilled; the message says why."""


def measured_sparsity(model, layer_names, dense_counts):
    """Fraction of the named layers' weights that the exported model no longer has.

    Zeros count as removed, and so do weights sliced away by channel slimming:
    ``1 - nonzero(exported weights) / dense_counts total``.

    Args:
        model: The exported model.
        layer_names: The layers that were masked in the sparse network.
        dense_counts: ``{name: number of weights in the dense layer}``.
    """
    modules = dict(model.named_modules())
    total = sum(dense_counts[n] for n in layer_names)
    if total == 0:  # nothing was masked: a dense model
        return 0.0
    kept = sum(int((modules[n].weight != 0).sum()) for n in layer_names)
    return 1.0 - kept / total


_DROP = object()


def plain_value(obj):
    """``obj`` reduced to str/int/float/bool/None, lists and dicts (numpy scalars converted,
    other objects dropped), so a checkpoint's meta loads with
    ``torch.load(weights_only=True)`` in any process, without allow-lists."""
    if obj is None or type(obj) in (str, bool, int, float):
        return obj
    for plain in (bool, int, float, str):  # subclasses, e.g. numpy.float64, str enums
        if isinstance(obj, plain):
            return plain(obj)
    if type(obj).__module__ == 'numpy' and getattr(obj, 'shape', None) == ():
        return plain_value(obj.item())  # numpy scalars: int64, bool_, ...
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            value = plain_value(value)
            if isinstance(key, str) and value is not _DROP:
                out[key] = value
        return out
    if isinstance(obj, (list, tuple)):
        values = [plain_value(v) for v in obj]
        return [v for v in values if v is not _DROP]
    return _DROP


def semi_structured_support():
    """``None`` when 2:4 semi-structured sparse kernels can run here, else the reason."""
    if not torch.cuda.is_available():
        return f'{SEMI_STRUCTURED_HELP}; torch sees no CUDA device here'
    major, minor = torch.cuda.get_device_capability()
    if major < 8:
        return (f'{SEMI_STRUCTURED_HELP}; this GPU ({torch.cuda.get_device_name()}) has '
                f'compute capability {major}.{minor}')
    if not hasattr(torch.sparse, 'to_sparse_semi_structured'):
        return f'{SEMI_STRUCTURED_HELP}; this torch has no torch.sparse.to_sparse_semi_structured'
    return None


def semi_structured_needs_half(model, layer_names):
    """True when a named Linear layer is fp32 and this GPU has no fp32 2:4 kernel.

    cuSPARSELt (torch's default backend) has no fp32 kernels at all; CUTLASS's run fp32 on
    compute capability 8.x only (A100-class), not on Hopper.
    """
    modules = dict(model.named_modules())
    fp32 = any(isinstance(modules[n], nn.Linear) and modules[n].weight.dtype == torch.float32
               for n in layer_names)
    return fp32 and torch.cuda.get_device_capability()[0] != 8


def is_two_four(weight):
    """True when every group of 4 consecutive weights along the input axis (the last axis of
    a Linear weight, the layout 2:4 kernels use) has at most 2 nonzeros."""
    if weight.dim() != 2 or weight.shape[1] % 4:
        return False
    return bool(((weight.reshape(weight.shape[0], -1, 4) != 0).sum(-1) <= 2).all())


@torch.no_grad()
def to_semi_structured(model, layer_names, dtype=None):
    """Convert the named 2:4-sparse Linear layers' weights with
    ``torch.sparse.to_sparse_semi_structured``, in place (the model must be on the GPU).

    Layers that are not Linear, not 2:4, or whose shape or dtype the kernels reject are left
    dense.

    Args:
        model: The exported (masks folded) model, on the GPU.
        layer_names: Candidate layers (the sparse network's masked layers).
        dtype: Cast each converted layer (weight and bias) to this dtype first. cuSPARSELt
            has fp16/bf16/int8 kernels only and CUTLASS's fp32 ones need compute capability
            8.x, so an fp32 model on a Hopper GPU needs ``torch.float16``; the model must
            then run under fp16 autocast (mmengine's ``TestLoop(fp16=True)``).

    Returns:
        ``(converted names, {skipped name: reason})``.
    """
    reason = semi_structured_support()
    if reason is not None:
        raise ExportError(reason)
    from torch.sparse import to_sparse_semi_structured
    modules = dict(model.named_modules())
    converted, skipped = [], {}
    for name in layer_names:
        module = modules[name]
        if type(module) is not nn.Linear:
            skipped[name] = f'{type(module).__name__}, not Linear'
            continue
        weight = module.weight
        if not is_two_four(weight):
            skipped[name] = 'weight is not 2:4 sparse'
            continue
        dense = weight.detach().contiguous()
        if dtype is not None:
            dense = dense.to(dtype)
        try:
            sparse = to_sparse_semi_structured(dense)
        except RuntimeError as error:
            # cuSPARSELt (the default backend) has no float32 kernels; CUTLASS has.
            try:
                sparse = torch.sparse.SparseSemiStructuredTensorCUTLASS.from_dense(dense)
            except RuntimeError:  # shape or dtype no kernel supports
                skipped[name] = str(error).splitlines()[0]
                continue
        module.weight = nn.Parameter(sparse, requires_grad=False)
        if dtype is not None and module.bias is not None:
            module.bias = nn.Parameter(module.bias.detach().to(dtype), requires_grad=False)
        converted.append(name)
    return converted, skipped
