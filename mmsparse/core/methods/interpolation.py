"""Network interpolation (Sparse Cocktail): greedy weight averaging of per-stage weights.

Starting from the first stage's weights w, for each later stage s pick p in a grid
(0.05, 0.10, ..., 0.95) maximising a score (the summed held-out metric of all subnets) of
``p * w + (1 - p) * w_s``, and keep that average. Floating-point tensors are averaged;
integer and bool tensors (masks, counters) come from the latest stage.
"""
import torch

DEFAULT_GRID = tuple(round(0.05 * i, 2) for i in range(1, 20))


def blend(state, stage_state, p):
    """``p * state + (1 - p) * stage_state`` for float tensors; the stage's others."""
    return {k: (p * state[k] + (1 - p) * v if torch.is_floating_point(v) else v)
            for k, v in stage_state.items()}


def greedy_interpolation(stage_states, score, grid=DEFAULT_GRID, log=print):
    """Greedily interpolate a list of state dicts (stage order).

    Args:
        stage_states: State dicts of stages 1..S (same keys).
        score: ``score(state) -> float``, higher is better (evaluated len(grid) * (S - 1)
            times).
        grid: Candidate p values.
        log: Called with a line per decision.

    Returns:
        tuple: (interpolated state dict, [(stage index, chosen p, its score), ...]).
    """
    if not stage_states:
        raise ValueError('network interpolation needs at least one stage checkpoint')
    state = stage_states[0]
    history = []
    for index, stage_state in enumerate(stage_states[1:], start=2):
        scored = [(score(blend(state, stage_state, p)), p) for p in grid]
        best_score, best_p = max(scored, key=lambda sp: (sp[0], -sp[1]))
        state = blend(state, stage_state, best_p)
        history.append((index, best_p, best_score))
        log(f'stage {index}: p={best_p} (score {best_score:.4f})')
    return state, history
