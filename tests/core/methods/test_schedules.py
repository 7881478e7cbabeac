"""Co-training schedules: pure functions of the iteration counter."""
import pytest

from mmsparse.core.methods.schedules import (CocktailSchedule, check_cocktail_options,
                                             cocktail_step, polynomial_progress, stage_at,
                                             stage_boundaries)

PATTERNS = ('unstructured', 'channel', 'nm')
COUNTS = {'unstructured': 10, 'channel': 10, 'nm': 3}


def test_dense_pivot_order():
    steps = [cocktail_step(t, PATTERNS, COUNTS, 10, 10).pattern for t in range(12)]
    assert steps == ['dense', 'unstructured', 'dense', 'channel', 'dense', 'nm'] * 2


def test_without_dense_pivot_every_step_is_sparse():
    steps = [cocktail_step(t, ('nm', ), {'nm': 1}, 1, 1, dense_pivot=False) for t in range(6)]
    assert {s.pattern for s in steps} == {'nm'}
    gradual = [cocktail_step(t, ('unstructured', ), {'unstructured': 5}, stage_at(t, 100, 5),
                             5, 'current', dense_pivot=False).index for t in range(100)]
    assert gradual[0] == 0 and gradual[-1] == 4 and gradual == sorted(gradual)


def test_a_pattern_named_twice_gets_twice_the_share():
    cycle = ('unstructured', 'channel', 'nm', 'nm')
    steps = [cocktail_step(t, cycle, COUNTS, 10, 10, 'unlocked', dense_pivot=False)
             for t in range(3000)]
    share = {p: sum(s.pattern == p for s in steps) / len(steps) for p in PATTERNS}
    assert share == {'unstructured': 0.25, 'channel': 0.25, 'nm': 0.5}
    # the N:M passes still spread over all three N:M subnets
    assert {s.index for s in steps if s.pattern == 'nm'} == {0, 1, 2}


def test_steps_are_deterministic_functions_of_the_iteration():
    a = [cocktail_step(t, PATTERNS, COUNTS, 5, 10, 'unlocked') for t in range(200)]
    b = [cocktail_step(t, PATTERNS, COUNTS, 5, 10, 'unlocked') for t in reversed(range(200))]
    assert a == b[::-1]
    assert a != [cocktail_step(t, PATTERNS, COUNTS, 5, 10, 'unlocked', seed=1)
                 for t in range(200)]


def test_cubic_stages_rise_fast_then_slow():
    stages = [stage_at(t, 1000, 10) for t in range(1001)]
    assert stages[0] == 1 and stages[800] == 10 and stages[-1] == 10
    assert all(b >= a for a, b in zip(stages, stages[1:]))
    bounds = stage_boundaries(1000, 10)
    assert len(bounds) == 9
    gaps = [b - a for a, b in zip(bounds, bounds[1:])]
    assert gaps[0] < gaps[-1], 'cubic: early boundaries come faster'
    assert polynomial_progress(400, 1000, 0.0, 0.8, power=1) == pytest.approx(0.5)


def test_ratio_modes():
    stage, stages = 4, 10  # 4 of 10 unstructured ratios unlocked
    odd = [t for t in range(1, 4000, 2) if cocktail_step(t, PATTERNS, COUNTS, stage, stages)
           .pattern == 'unstructured']
    current = {cocktail_step(t, PATTERNS, COUNTS, stage, stages, 'current').index for t in odd}
    unlocked = {cocktail_step(t, PATTERNS, COUNTS, stage, stages, 'unlocked').index
                for t in odd}
    assert current == {3}
    assert unlocked == {0, 1, 2, 3}
    nm = {cocktail_step(t, PATTERNS, COUNTS, 1, stages, 'current').index
          for t in range(5, 4000, 6)}
    assert nm == {0, 1, 2}, 'N:M subnets are all 50%: always sampled among all'
    with pytest.raises(ValueError, match='ratio mode'):
        cocktail_step(1, PATTERNS, COUNTS, 1, 10, 'random')


@pytest.mark.parametrize('options, match', [
    (dict(patterns=()), r'patterns must name sparse patterns .* got \[\]'),
    (dict(patterns=('dense', )), r"patterns must name .* got \['dense'\]"),
    (dict(patterns=('unstructured', 'chanel')), r"patterns .* got \['unstructured', 'chanel'\]"),
    (dict(num_stages=0), r'num_stages must be an integer >= 1 \(or None\), got 0'),
    (dict(num_stages=-2), 'num_stages must be an integer >= 1 .* got -2'),
    (dict(num_stages=2.5), 'num_stages must be an integer >= 1 .* got 2.5'),
    (dict(stage_end=1.5), 'stage_start <= stage_end <= 1 .* stage_end=1.5'),
    (dict(stage_start=0.6, stage_end=0.4), 'stage_start=0.6, stage_end=0.4'),
    (dict(stage_start=-0.1), 'stage_start=-0.1'),
    (dict(stage_power=0), 'stage_power must be > 0, got 0'),
    (dict(ratio_mode='all'), "ratio_mode must be one of .* got 'all'"),
    (dict(fixed_stage=0), 'fixed_stage must be one of the stages, got 0'),
    (dict(num_stages=3, fixed_stage=4), r'fixed_stage must be one of 1..3 \(num_stages\), got 4'),
])
def test_bad_cocktail_options_fail_naming_the_option(options, match):
    with pytest.raises(ValueError, match=match):
        check_cocktail_options(**options)


def test_cocktail_schedule_is_the_stage_and_step_functions_of_one_run():
    counts = dict(unstructured=3, channel=2)
    plan = CocktailSchedule(counts, ('unstructured', 'channel'), 100, seed=7)
    assert plan.num_stages == 3  # the most ratios any pattern has
    for t in range(100):
        assert plan.stage_at(t) == stage_at(t, 100, 3)
        assert plan.step_at(t) == cocktail_step(t, ('unstructured', 'channel'), counts,
                                                stage_at(t, 100, 3), 3, seed=7)
    fixed = CocktailSchedule(counts, ('unstructured', ), 100, fixed_stage=2)
    assert {fixed.stage_at(t) for t in range(100)} == {2}
    # num_stages taken from the model still bounds fixed_stage
    with pytest.raises(ValueError, match=r'fixed_stage must be one of 1..3 \(num_stages\), got 4'):
        CocktailSchedule(counts, ('unstructured', ), 100, fixed_stage=4)
