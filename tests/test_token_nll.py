"""trainers/token_nll.py: the chunked float32 next-token NLL equals F.cross_entropy, values and gradients."""

import pytest
import torch
import torch.nn.functional as F

import trainers.token_nll as token_nll_module
from trainers.token_nll import next_token_nll


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(token_nll_module, "CHUNK_ELEMENTS", 30)  # several chunks even on tiny shapes


def test_gradient_is_exact_in_float64(small_chunks):
    logits = torch.randn(3, 5, 11, dtype=torch.float64, requires_grad=True)
    ids = torch.randint(0, 11, (3, 5))
    mask = torch.rand(3, 4) > 0.3
    assert torch.autograd.gradcheck(lambda x: next_token_nll(x, ids, mask), (logits,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_float32_cross_entropy_values_and_gradients(small_chunks, dtype):
    torch.manual_seed(0)
    logits = torch.randn(4, 9, 50).to(dtype).requires_grad_()
    ids = torch.randint(0, 50, (4, 9))
    mask = torch.rand(4, 8) > 0.3
    weights = torch.randn(4, 8)
    ours = next_token_nll(logits, ids, mask)
    assert ours.dtype == torch.float32 and ours.shape == (4, 8)
    (ours * weights).sum().backward()
    grad, logits.grad = logits.grad.clone(), None
    ref = F.cross_entropy(logits[:, :-1].float().reshape(-1, 50), ids[:, 1:].reshape(-1), reduction="none")
    ref = ref.view(4, 8) * mask
    (ref * weights).sum().backward()
    torch.testing.assert_close(ours, ref)
    assert grad.dtype == dtype
    torch.testing.assert_close(grad, logits.grad)
    assert grad[:, -1].abs().sum() == 0  # the last position predicts nothing
    assert grad[:, :-1][~mask].abs().sum() == 0  # nor do masked positions


def test_without_a_mask_every_position_counts():
    logits, ids = torch.randn(2, 6, 13), torch.randint(0, 13, (2, 6))
    expected = -torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    torch.testing.assert_close(next_token_nll(logits, ids), expected)
