"""A CPU rollout of many rows runs in blocks of rows (cache locality); it must equal the
rollout of all rows at once, values and gradients."""

import torch

from lyagym.learned_models import SimpleDynamics, StableControlledDynamics
from lyagym.learned_models.integrators import ROLLOUT_BLOCK_ROWS


def _models():
    torch.manual_seed(0)
    return [SimpleDynamics(2, 1, hidden=(8, 8), dt=0.05), StableControlledDynamics(2, 1, hidden=(8, 8), dt=0.05)]


def test_blocked_rollout_equals_one_batch():
    rows = 2 * ROLLOUT_BLOCK_ROWS + 123  # above the threshold, with a partial last block
    g = torch.Generator().manual_seed(1)
    for model in _models():
        x0 = torch.randn(rows, 2, generator=g)
        actions = torch.randn(rows, 3, 1, generator=g)
        with torch.no_grad():
            blocked = model.rollout(x0, actions)
            whole = model._rollout_rows(x0, list(actions.unbind(1)))
        assert blocked.shape == (rows, 4, 2)
        torch.testing.assert_close(blocked, whole, rtol=1e-6, atol=1e-6)


def test_blocked_rollout_gradients_reach_every_block():
    model = _models()[0]
    rows = 2 * ROLLOUT_BLOCK_ROWS + 1
    actions = torch.zeros(rows, 2, 1, requires_grad=True)
    model.rollout(torch.ones(rows, 2), actions)[:, -1].sum().backward()
    per_row = actions.grad.abs().sum(dim=(1, 2))
    assert torch.all(per_row > 0)  # the last block's single row included
    torch.testing.assert_close(per_row, per_row[0].expand(rows))  # identical rows, identical gradients
