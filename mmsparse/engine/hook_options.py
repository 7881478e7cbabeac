"""Checks of SparseSubnetsHook's options, run when the hook is built (before any model is):
a wrong option fails at once, naming the option, instead of at the first use."""
from mmsparse.core import DENSE, MaskSpec, parse_subnets
from mmsparse.core.subnets import cocktail_subnets

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


def _subnet_list(subnets):
    """Parsed subnets of a list of names or a subnet set's name; None stays None."""
    if isinstance(subnets, str):
        if subnets not in SUBNET_SETS:
            raise ValueError(f'unknown subnet set {subnets!r}; known: {sorted(SUBNET_SETS)}'
                             ' (or give a list of subnet names)')
        subnets = SUBNET_SETS[subnets]()
    if subnets is None:
        return None
    if not isinstance(subnets, (list, tuple)):
        raise ValueError(f'SparseSubnetsHook: subnets must be a list of subnet names, a '
                         f'subnet set ({sorted(SUBNET_SETS)}) or None, got {subnets!r}')
    specs = parse_subnets(subnets)
    if all(s == DENSE for s in specs):
        raise ValueError(f'SparseSubnetsHook: subnets={list(subnets)!r} lists no sparse '
                         "subnet; name some, e.g. ['unstructured@0.50', 'nm@2:4'], or "
                         'remove the hook to train a dense model')
    return specs


def _mask_spec(mask_spec):
    if mask_spec is not None and not isinstance(mask_spec, dict):
        raise ValueError(f'SparseSubnetsHook: mask_spec must be a dict of MaskSpec options, '
                         f'got {mask_spec!r}')
    try:
        return MaskSpec(**(mask_spec or {}))
    except TypeError as err:  # an unknown option
        raise ValueError(f'SparseSubnetsHook: bad mask_spec {mask_spec!r}: {err}; options: '
                         'unstructured_scope, channel_score, block_shape') from None


def _image_size(size):
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
        raise ValueError('SparseSubnetsHook: analysis_image_size must be (H, W), two '
                         f'positive ints, got {size!r}')
    return tuple(size)


def check_subnets_hook_options(subnets, include, exclude, mask_spec, analysis_image_size,
                               **flags):
    """SparseSubnetsHook's options, checked and normalised.

    Args:
        subnets: Subnet names, a subnet set's name (``'cocktail'``) or None.
        include, exclude: Lists of layer-name globs.
        mask_spec: A dict of :class:`~mmsparse.core.MaskSpec` options, or None.
        analysis_image_size: (H, W), two positive ints.
        **flags: The boolean options (``channel_groups``, ``sparsify_input_layers``, ...).

    Returns:
        dict: the hook's attributes (``subnets`` as specs or None, ``include`` and
        ``exclude`` as tuples, ``mask_spec`` as a MaskSpec, the flags).

    Raises:
        ValueError: naming the first bad option and what it must be.
    """
    options = dict(subnets=_subnet_list(subnets), include=_glob_list(include, 'include'),
                   exclude=_glob_list(exclude, 'exclude'), mask_spec=_mask_spec(mask_spec),
                   analysis_image_size=_image_size(analysis_image_size))
    if not options['include']:
        raise ValueError("SparseSubnetsHook: include is empty (no layer would be masked); "
                         "use ['*'] for every maskable layer")
    options.update({name: _check_flag(value, name) for name, value in flags.items()})
    return options
