"""Per-pattern mask sources of ``SparseCocktailHook`` (Chase's channels, Spartan's
unstructured masks) on the runner; the torch-only logic is in
:mod:`mmsparse.core.methods.mask_sources`."""
from mmsparse.core import generate_masks
from mmsparse.core.methods.chase import check_uncoupled
from mmsparse.core.methods.mask_sources import (check_mask_sources, chase_channel_masks,
                                                spartan_unstructured_step)
from mmsparse.core.methods.spartan import (SpartanMasker, SpartanSchedule,
                                           check_spartan_schedule, clear_forward_weights)
from mmsparse.core.patterns import SparsitySpecError
from .network import broadcast_masks

# Options each source accepts (besides ``type``), with their defaults.
SOURCE_OPTIONS = {
    'umg': {},
    # beta: Chase's per-layer floor factor, ceil(beta (1 - r) C) channels kept at ratio r.
    'chase': dict(beta=0.5),
    # beta_start -> beta_end linearly until freeze_at (None: the cocktail's stage_end);
    # from then on the masks stay fixed, like UMG's after its last stage boundary.
    'spartan': dict(beta_start=1.0, beta_end=20.0, freeze_at=None, through_mask=True),
}


def _parse(pattern, value):
    """``'chase'`` or ``dict(type='chase', beta=0.3)`` -> ``(name, options)``."""
    if isinstance(value, str):
        name, options = value, {}
    elif isinstance(value, dict) and 'type' in value:
        options = dict(value)
        name = options.pop('type')
    else:
        raise SparsitySpecError(f'mask_sources[{pattern!r}] must be a source name or a dict '
                                f"with 'type', got {value!r}")
    if name in SOURCE_OPTIONS:
        unknown = sorted(set(options) - set(SOURCE_OPTIONS[name]))
        if unknown:
            raise SparsitySpecError(f'mask_sources[{pattern!r}]: {name} has no option(s) '
                                    f'{unknown}; options: {sorted(SOURCE_OPTIONS[name])}')
        options = {**SOURCE_OPTIONS[name], **options}
    return name, options


class CocktailMaskSources:
    """Which method makes each pattern's masks inside Sparse Cocktail.

    Args:
        sources: ``{pattern: source}``, a source being a name (``'umg'``, ``'chase'``,
            ``'spartan'``) or a dict with ``type`` and options (:data:`SOURCE_OPTIONS`).
            None or ``{}``: UMG for everything (the cocktail's own behaviour, unchanged).
    """

    def __init__(self, sources=None):
        parsed = {p: _parse(p, v) for p, v in dict(sources or {}).items()}
        self.names = check_mask_sources({p: n for p, (n, _) in parsed.items()})
        self.options = {p: opts for p, (_, opts) in parsed.items()}
        if self.spartan:
            opts = self.options['unstructured']
            check_spartan_schedule(anneal_end=0.0, beta_start=opts['beta_start'],
                                   beta_end=opts['beta_end'],
                                   freeze_at=1.0 if opts['freeze_at'] is None
                                   else opts['freeze_at'])
        if self.chase and not 0.0 <= self.options['channel']['beta'] <= 1.0:
            raise SparsitySpecError(f"mask_sources['channel']: Chase beta must be in [0, 1], "
                                    f"got {self.options['channel']['beta']}")
        self.masker = self.schedule = None

    @property
    def chase(self):
        return self.names['channel'] == 'chase'

    @property
    def spartan(self):
        return self.names['unstructured'] == 'spartan'

    @property
    def default(self):
        return all(n == 'umg' for n in self.names.values())

    def describe(self):
        return ', '.join(f'{p} by {n}' for p, n in self.names.items() if n != 'umg')

    def setup(self, runner, network, held_patterns, stage_end):
        """Check the sources against the model and optimizer; build Spartan's state."""
        check_mask_sources({p: n for p, n in self.names.items() if n != 'umg'}, held_patterns)
        if self.chase:
            check_uncoupled(network, "mask_sources['channel']='chase'")
        if not self.spartan:
            return
        opts = self.options['unstructured']
        freeze_at = stage_end if opts['freeze_at'] is None else opts['freeze_at']
        # Only β and the freeze come from Spartan's schedule: the trained ratio (Spartan's
        # density anneal) is the cocktail's stage schedule.
        self.schedule = SpartanSchedule(0.5, runner.max_iters, 0.0, opts['beta_start'],
                                        opts['beta_end'], freeze_at)
        self.masker = SpartanMasker(network.layers, 'global')

    def regenerate(self, network):
        """Every mask at a stage boundary: UMG, then the non-UMG sources' own masks."""
        generate_masks(network, network.subnets())
        self.apply(network)

    def apply(self, network):
        """Replace the masks of the patterns with a non-UMG source (no-op by default).

        Spartan's stored levels at a boundary are the global magnitude levels UMG has just
        made (its hard projection at unit costs), so only Chase has work here.
        """
        if self.chase:
            chase_channel_masks(network, self.options['channel']['beta'])

    def before_step(self, runner, network, spec):
        """Arm Spartan's dual-averaging forward on an unstructured step (else nothing)."""
        if not self.spartan:
            return
        clear_forward_weights(network.layers)
        it = runner.iter
        hub = runner.message_hub
        if self.schedule.frozen(it):
            if it == self.schedule.freeze_iter:  # once (a resumed run past it needs nothing)
                broadcast_masks(network)
                runner.logger.info(f'mmsparse: iteration {it}: Spartan unstructured masks '
                                   'frozen')
            return
        beta = self.schedule.beta_at(it)
        hub.update_scalar('train/spartan_beta', beta)
        if spec.pattern != 'unstructured':
            return
        spartan_unstructured_step(network, self.masker, spec, beta,
                                  self.options['unstructured']['through_mask'])

    def after_step(self, network):
        if self.spartan:
            clear_forward_weights(network.layers)  # drop the graph; validation sees plain masks

