"""trainers/token_nll.py: the chunked float32 next-token NLL equals F.cross_entropy, values and gradients."""

import pytest
import torch
import torch.nn.functional as F

import trainers.token_nll as token_nll_module
from trainers.token_nll import next_token_rows, token_nll


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(token_nll_module, "CHUNK_ELEMENTS", 30)  # several chunks even on tiny shapes


def test_gradient_is_exact_in_float64(small_chunks):
    logits = torch.randn(3, 5, 11, dtype=torch.float64, requires_grad=True)
    rows, targets = torch.tensor([0, 3, 7, 8, 14]), torch.randint(0, 11, (5,))
    assert torch.autograd.gradcheck(lambda x: token_nll(x, rows, targets), (logits,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_float32_cross_entropy_values_and_gradients(small_chunks, dtype):
    torch.manual_seed(0)
    logits = torch.randn(4, 9, 50).to(dtype).requires_grad_()
    ids = torch.randint(0, 50, (4, 9))
    weights = torch.randn(4 * 8)
    ours = token_nll(logits, next_token_rows(4, 9), ids[:, 1:].reshape(-1))
    assert ours.dtype == torch.float32
    (ours * weights).sum().backward()
    grad, logits.grad = logits.grad.clone(), None
    ref = F.cross_entropy(logits[:, :-1].float().reshape(-1, 50), ids[:, 1:].reshape(-1), reduction="none")
    (ref * weights).sum().backward()
    torch.testing.assert_close(ours, ref)
    assert grad.dtype == dtype
    torch.testing.assert_close(grad, logits.grad)
    assert grad[:, -1].abs().sum() == 0  # the last position predicts nothing
