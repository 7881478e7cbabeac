"""Co-training schedules as pure functions of the iteration counter.

Being stateless, they give every rank the same answer without communication and continue
exactly on resume: the iteration counter is all the state there is.

* :func:`stage_at`: gradual ratio increase inside one training schedule. Stages unlock on a
  polynomial (cubic by default, as in gradual magnitude pruning) between ``start`` and
  ``end`` (fractions of training): fast early, slow late.
* :func:`cocktail_step`: Sparse Cocktail's dense-pivot order, one network per iteration:
  D, U, D, C, D, NM, ... (a dense step before every sparse step), and which ratio of the
  pattern the sparse step trains.
"""
import hashlib
from dataclasses import dataclass

RATIO_MODES = ('current', 'unlocked')
SPARSE_PATTERNS = ('unstructured', 'channel', 'nm', 'block')


def _whole(value):
    return isinstance(value, int) and not isinstance(value, bool)


def check_cocktail_options(patterns=None, num_stages=None, stage_start=0.0, stage_end=0.8,
                           stage_power=3, ratio_mode='current', fixed_stage=None):
    """Raise a ValueError naming the first impossible Sparse Cocktail schedule option.

    ``patterns`` and ``num_stages`` may be None (taken from the model later: call again with
    them, e.g. to bound ``fixed_stage`` by the number of stages).
    """
    if patterns is not None:
        bad = [p for p in patterns if p not in SPARSE_PATTERNS]
        if not len(patterns) or bad:
            raise ValueError(f'patterns must name sparse patterns of {SPARSE_PATTERNS} (at '
                             f'least one), got {list(patterns)}')
    if num_stages is not None and (not _whole(num_stages) or num_stages < 1):
        raise ValueError(f'num_stages must be an integer >= 1 (or None), got {num_stages!r}')
    if not 0.0 <= stage_start <= stage_end <= 1.0:
        raise ValueError('the stage schedule needs 0 <= stage_start <= stage_end <= 1 '
                         f'(fractions of training), got stage_start={stage_start}, '
                         f'stage_end={stage_end}')
    if not stage_power > 0:
        raise ValueError(f'stage_power must be > 0, got {stage_power!r}')
    if ratio_mode not in RATIO_MODES:
        raise ValueError(f'ratio_mode must be one of {RATIO_MODES}, got {ratio_mode!r}')
    if fixed_stage is not None and (not _whole(fixed_stage) or fixed_stage < 1 or (
            num_stages is not None and fixed_stage > num_stages)):
        stages = 'the stages' if num_stages is None else f'1..{num_stages} (num_stages)'
        raise ValueError(f'fixed_stage must be one of {stages}, got {fixed_stage!r}')


def polynomial_progress(iteration, max_iters, start=0.0, end=0.8, power=3):
    """Progress in [0, 1]: ``1 - (1 - x)^power`` with x the position between start and end."""
    begin, finish = start * max_iters, end * max_iters
    if iteration <= begin:
        return 0.0
    if iteration >= finish or finish <= begin:
        return 1.0
    x = (iteration - begin) / (finish - begin)
    return 1.0 - (1.0 - x) ** power


def stage_at(iteration, max_iters, num_stages, start=0.0, end=0.8, power=3):
    """Stage (1..num_stages) at ``iteration``: how many ratios are unlocked.

    Stage 1 from the start; the last stage from ``end`` on; in between on the polynomial.
    """
    progress = polynomial_progress(iteration, max_iters, start, end, power)
    return min(num_stages, 1 + int(progress * (num_stages - 1) + 1e-9))


def stage_boundaries(max_iters, num_stages, start=0.0, end=0.8, power=3):
    """Iterations at which stages 2..num_stages begin (for logs and tests)."""
    boundaries, stage = [], 1
    for it in range(max_iters + 1):
        now = stage_at(it, max_iters, num_stages, start, end, power)
        if now > stage:
            boundaries.extend([it] * (now - stage))
            stage = now
    return boundaries


def _pick(iteration, count, salt):
    """A deterministic choice in ``range(count)`` from the iteration (same on all ranks)."""
    digest = hashlib.sha256(f'{salt}:{iteration}'.encode()).digest()
    return int.from_bytes(digest[:8], 'little') % count


@dataclass(frozen=True)
class CocktailStep:
    """What iteration t trains: ``pattern`` ('dense', 'unstructured', ...) and ``index``
    into that pattern's ratios (sorted ascending; 0 for dense)."""
    pattern: str
    index: int = 0


def cocktail_step(iteration, patterns, ratio_counts, stage, num_stages, mode='current',
                  seed=0, dense_pivot=True):
    """Dense-pivot co-training: which network iteration ``iteration`` trains.

    Even iterations train dense; odd ones cycle through ``patterns`` (D, U, D, C, D, NM, ...).
    With ``dense_pivot=False`` every iteration trains a sparse subnet (U, C, NM, ...); with a
    single pattern and ``mode='current'`` that is a dedicated run with gradual pruning.

    Args:
        iteration: The global iteration counter.
        patterns: Sparse patterns in cycle order, e.g. ('unstructured', 'channel', 'nm').
            A pattern named twice gets twice the share of the sparse steps.
        ratio_counts: pattern -> how many subnets (ratios) it has.
        stage: Current stage (1..num_stages) from :func:`stage_at`.
        num_stages: Number of stages.
        mode: ``'current'`` (default) trains the current stage's ratio of each pattern (the
            paper); ``'unlocked'`` samples uniformly among all ratios unlocked so far, so
            earlier ratios keep being trained. Patterns whose subnets are not nested by ratio (N:M)
            are always sampled among all their subnets.
        seed: Salt of the deterministic sampling.
        dense_pivot: Train the dense network every other iteration.
    """
    if mode not in RATIO_MODES:
        raise ValueError(f'ratio mode must be one of {RATIO_MODES}, got {mode!r}')
    if not patterns or (dense_pivot and iteration % 2 == 0):
        return CocktailStep('dense')
    slot = iteration // 2 if dense_pivot else iteration
    pattern = patterns[slot % len(patterns)]
    count = ratio_counts[pattern]
    if pattern == 'nm':  # 1:2, 2:4, 4:8 are all 50%: no ratio progression to follow
        return CocktailStep(pattern, _pick(iteration, count, f'{seed}:{pattern}'))
    # Stage s unlocks the first ceil(s / S * count) ratios (all of them in the last stage).
    unlocked = max(1, -(-stage * count // num_stages))
    if mode == 'current':
        return CocktailStep(pattern, unlocked - 1)
    return CocktailStep(pattern, _pick(iteration, unlocked, f'{seed}:{pattern}'))


class CocktailSchedule:
    """Sparse Cocktail's plan for one run: the stage and the subnet of every iteration.

    Args:
        ratio_counts: ``{pattern: how many subnets (ratios) it has}``.
        cycle: Sparse patterns in cycle order (see :func:`cocktail_step`).
        max_iters: Training length.
        num_stages: Number of ratio stages; None: the most ratios any pattern has.
        start, end, power: the stage schedule (:func:`stage_at`).
        mode, seed, dense_pivot: see :func:`cocktail_step`.
        fixed_stage: Train every iteration in this stage (1..num_stages), or None.
    """

    def __init__(self, ratio_counts, cycle, max_iters, num_stages=None, start=0.0, end=0.8,
                 power=3, mode='current', seed=0, dense_pivot=True, fixed_stage=None):
        self.ratio_counts, self.cycle = dict(ratio_counts), tuple(cycle)
        self.num_stages = num_stages or max(self.ratio_counts.values())
        check_cocktail_options(self.cycle, self.num_stages, start, end, power, mode,
                               fixed_stage)
        self.max_iters = max_iters
        self.stage_args = dict(start=start, end=end, power=power)
        self.mode, self.seed, self.dense_pivot = mode, seed, dense_pivot
        self.fixed_stage = fixed_stage

    def stage_at(self, iteration):
        """The stage (1..num_stages) ``iteration`` trains in."""
        if self.fixed_stage is not None:
            return self.fixed_stage
        return stage_at(iteration, self.max_iters, self.num_stages, **self.stage_args)

    def step_at(self, iteration):
        """What ``iteration`` trains (:class:`CocktailStep`)."""
        return cocktail_step(iteration, self.cycle, self.ratio_counts, self.stage_at(iteration),
                             self.num_stages, self.mode, self.seed, self.dense_pivot)
