"""AST gradient correction fires on conflicting gradients and changes the update."""
import pytest
import torch

from mmsparse.core.methods.correction import GradientCorrector, correct_gradient


def test_projection_removes_the_conflicting_component():
    g, prev = torch.tensor([1.0, -2.0]), torch.tensor([0.0, 1.0])
    corrected, fired = correct_gradient(g, prev)
    assert fired and torch.equal(corrected, torch.tensor([1.0, 0.0]))
    assert torch.dot(corrected, prev) == 0
    same, fired = correct_gradient(torch.tensor([1.0, 2.0]), prev)
    assert not fired and torch.equal(same, torch.tensor([1.0, 2.0]))


def test_corrector_fires_and_changes_the_sgd_update():
    """Two subnets whose gradients conflict: the second update is corrected."""
    w = torch.nn.Parameter(torch.tensor([1.0, 1.0]))
    opt = torch.optim.SGD([w], lr=0.1)
    corrector = GradientCorrector(group_size=2)
    steps = []
    for it, target in enumerate([torch.tensor([0.0, 5.0]), torch.tensor([0.0, -5.0])]):
        opt.zero_grad()
        ((w - target) ** 2).sum().backward()  # the two targets pull in opposite directions
        raw = w.grad.clone()
        fired = corrector.apply([('w', w)], it)
        before = w.detach().clone()
        opt.step()
        steps.append(dict(fired=fired, raw=raw, update=w.detach() - before))
    first, second = steps
    assert first['fired'] == 0 and second['fired'] == 1 and corrector.fired == 1
    assert torch.dot(second['raw'], first['raw']) < 0  # a real conflict
    assert not torch.allclose(second['update'], -0.1 * second['raw'])  # the update changed
    assert torch.dot(second['update'], first['raw']).abs() < 1e-5  # no longer undoes it


def test_published_bug_would_never_fire():
    """Storing the current gradient as "previous" before the check makes <g, g> >= 0."""
    g = torch.tensor([1.0, -3.0])
    assert not correct_gradient(g, g.clone())[1]


def test_group_boundaries_reset_and_validation():
    corrector = GradientCorrector(group_size=2)
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([1.0, 0.0])
    corrector.apply([('p', p)], 0)
    p.grad = torch.tensor([-1.0, 0.0])
    assert corrector.apply([('p', p)], 2) == 0  # iteration 2 starts a new group
    with pytest.raises(ValueError, match='>= 2 subnets'):
        GradientCorrector(1)


def test_restrict_corrects_and_remembers_only_the_given_params():
    """A parameter outside the restriction keeps its raw gradient even when it conflicts."""
    corrector = GradientCorrector(group_size=2)
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    corrector.restrict([a])
    a.grad, b.grad = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0])
    corrector.apply([('a', a), ('b', b)], 0)
    assert set(corrector.previous) == {'a'}
    a.grad, b.grad = torch.tensor([-1.0, 1.0]), torch.tensor([-1.0, 1.0])
    assert corrector.apply([('a', a), ('b', b)], 1) == 1
    assert torch.equal(a.grad, torch.tensor([0.0, 1.0]))  # projected
    assert torch.equal(b.grad, torch.tensor([-1.0, 1.0]))  # untouched
    corrector.restrict(None)  # back to every parameter
    assert corrector.only is None and corrector.previous == {}
