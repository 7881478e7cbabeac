"""Greedy network interpolation picks the best average per stage."""
import pytest
import torch

from mmsparse.core.methods.interpolation import blend, greedy_interpolation


def test_blend_averages_floats_and_takes_the_stage_masks():
    a = {'w': torch.tensor([0.0, 4.0]), 'mask': torch.tensor([1, 1], dtype=torch.uint8)}
    b = {'w': torch.tensor([4.0, 0.0]), 'mask': torch.tensor([0, 1], dtype=torch.uint8)}
    out = blend(a, b, 0.25)
    assert torch.equal(out['w'], torch.tensor([3.0, 1.0]))
    assert torch.equal(out['mask'], b['mask'])


def test_greedy_choice_maximises_the_score():
    target = torch.tensor([1.0, 1.0])
    stages = [{'w': torch.tensor([0.0, 0.0])}, {'w': torch.tensor([2.0, 2.0])},
              {'w': torch.tensor([1.0, 1.0])}]
    calls = []

    def score(state):
        calls.append(1)
        return -float((state['w'] - target).abs().sum())

    state, history = greedy_interpolation(stages, score, grid=(0.25, 0.5, 0.75),
                                          log=lambda line: None)
    assert [h[1] for h in history][0] == 0.5  # 0.5 * 0 + 0.5 * 2 hits the target
    assert torch.allclose(state['w'], target)
    assert len(calls) == 6
    with pytest.raises(ValueError, match='at least one stage'):
        greedy_interpolation([], score)
