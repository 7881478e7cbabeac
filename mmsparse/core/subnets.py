"""Subnet names and specs: ``dense``, ``unstructured@0.50``, ``channel@0.30``, ``nm@2:4``,
``block@0.50``.

The name is the contract between training, checkpoints, ``tools/test.py --subnets`` and the
results JSON, so parsing is strict and formatting is canonical (``name(parse(s))`` is stable).
The number after ``@`` is the sparsity: the fraction of weights (or channels) removed.

One canonical value everywhere: a spec's sparsity is rounded to :data:`RATIO_DECIMALS`
decimals when the spec is made, which is also the precision checkpoints keep (the masked
layers' ratio buffers are float32). So ``unstructured@0.1234567`` is ``unstructured@0.123457``
when parsed, trained, held and named again, and ``@0.5`` equals ``@0.50``.
"""
import re
from dataclasses import dataclass

PATTERNS = ('dense', 'unstructured', 'channel', 'nm', 'block')
RATIO_PATTERNS = ('unstructured', 'channel', 'block')
_RATIO_RE = re.compile(r'^(unstructured|channel|block)@([0-9]*\.?[0-9]+)$')
_NM_RE = re.compile(r'^nm@([0-9]+):([0-9]+)$')
# Sparsities are kept to this many decimals (float32 buffers hold about seven digits).
RATIO_DECIMALS = 6


class SubnetNameError(ValueError):
    """A subnet name does not parse, or names an impossible sparsity."""


def canonical_ratio(ratio):
    """``ratio`` rounded to :data:`RATIO_DECIMALS` decimals (the value specs hold)."""
    return round(float(ratio), RATIO_DECIMALS)


def format_ratio(ratio):
    """Two decimals when exact (``0.50``), otherwise up to six decimals."""
    ratio = canonical_ratio(ratio)
    if abs(round(ratio, 2) - ratio) < 1e-9:
        return f'{ratio:.2f}'
    return f'{ratio:.{RATIO_DECIMALS}f}'.rstrip('0')


@dataclass(frozen=True)
class SubnetSpec:
    """One subnet: a pattern and its sparsity.

    Attributes:
        pattern: One of :data:`PATTERNS`.
        ratio: Fraction of weights (channels for ``channel``) removed, in [0, 1), rounded to
            :data:`RATIO_DECIMALS` decimals; a nonzero ratio that rounds to 0 or 1 is an
            error. For ``nm`` it is ``1 - n / m``.
        n: Weights kept per group (``nm`` only).
        m: Group size along the input-channel axis (``nm`` only).
    """
    pattern: str
    ratio: float = 0.0
    n: int = 0
    m: int = 0

    def __post_init__(self):
        if self.pattern not in PATTERNS:
            raise SubnetNameError(f'unknown sparsity pattern {self.pattern!r}; expected one of '
                                  f'{PATTERNS}')
        if self.pattern == 'nm':
            if not 0 < self.n < self.m:
                raise SubnetNameError(f'N:M sparsity needs 0 < N < M, got {self.n}:{self.m}')
            object.__setattr__(self, 'ratio', 1.0 - self.n / self.m)
        elif self.pattern in RATIO_PATTERNS:
            given = float(self.ratio)
            ratio = canonical_ratio(given)
            if not 0.0 <= given < 1.0:
                raise SubnetNameError(f'{self.pattern} sparsity must be in [0, 1), got '
                                      f'{self.ratio}')
            if ratio >= 1.0 or (ratio == 0.0 and given > 0.0):
                raise SubnetNameError(
                    f'{self.pattern} sparsity {self.ratio} rounds to {ratio:.1f} at '
                    f'{RATIO_DECIMALS} decimals, the precision subnets are kept at; give a '
                    f'sparsity in [{10 ** -RATIO_DECIMALS:.6f}, '
                    f'{1 - 10 ** -RATIO_DECIMALS:.6f}]')
            object.__setattr__(self, 'ratio', ratio)
        elif self.ratio != 0.0:
            raise SubnetNameError(f'dense has no sparsity, got {self.ratio}')

    @property
    def name(self):
        """The canonical name, e.g. ``unstructured@0.50`` or ``nm@2:4``."""
        if self.pattern == 'dense':
            return 'dense'
        if self.pattern == 'nm':
            return f'nm@{self.n}:{self.m}'
        return f'{self.pattern}@{format_ratio(self.ratio)}'

    @property
    def sort_key(self):
        """Order for tables: by pattern (dense first), then by sparsity."""
        return PATTERNS.index(self.pattern), self.ratio, self.m

    def __str__(self):
        return self.name


DENSE = SubnetSpec('dense')


def parse_subnet(name):
    """Parse a subnet name (or pass a :class:`SubnetSpec` through).

    Raises:
        SubnetNameError: naming the string and the accepted forms.
    """
    if isinstance(name, SubnetSpec):
        return name
    text = str(name).strip()
    if text == 'dense':
        return DENSE
    try:
        match = _RATIO_RE.match(text)
        if match:
            return SubnetSpec(match.group(1), float(match.group(2)))
        match = _NM_RE.match(text)
        if match:
            return SubnetSpec('nm', n=int(match.group(1)), m=int(match.group(2)))
    except SubnetNameError as err:
        raise SubnetNameError(f'subnet name {text!r}: {err}') from None
    raise SubnetNameError(
        f'cannot parse subnet name {text!r}; expected "dense", "unstructured@0.50", '
        '"channel@0.30", "block@0.50" or "nm@2:4"')


def parse_subnets(names):
    """Parse a list of names, rejecting duplicates; returns specs in the given order."""
    specs = [parse_subnet(n) for n in names]
    seen = set()
    for spec in specs:
        if spec.name in seen:
            raise SubnetNameError(f'subnet {spec.name!r} is listed twice')
        seen.add(spec.name)
    return specs


def cocktail_subnets(num_unstructured=10, num_channel=10, unstructured_base=0.8,
                     channel_base=0.9, nm=((1, 2), (2, 4), (4, 8))):
    """The Sparse Cocktail subnet set (24 subnets with the defaults).

    dense; unstructured at sparsity ``1 - 0.8**s`` and channel at ``1 - 0.9**s`` for
    s = 1..10, rounded to two decimals so names stay readable (0.20, 0.36, 0.49, ...);
    N:M 1:2, 2:4, 4:8.
    """
    unstructured = [SubnetSpec('unstructured', round(1 - unstructured_base ** s, 2))
                    for s in range(1, num_unstructured + 1)]
    channel = [SubnetSpec('channel', round(1 - channel_base ** s, 2))
               for s in range(1, num_channel + 1)]
    return [DENSE, *unstructured, *channel, *(SubnetSpec('nm', n=n, m=m) for n, m in nm)]
