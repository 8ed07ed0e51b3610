import logging

import pytest
import torch

from uniemox.errors import UserError
from uniemox.models.attention import Attention, attention, resolve_backend, xformers_available


def _qkv(b=2, n=17, h=3, d=16, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(b, n, h, d, generator=g, dtype=torch.float32).to(device, dtype) for _ in range(3)]


def _by_hand(q, k, v):
    """Per head, the textbook formula with explicit loops over batch and head."""
    out = torch.empty_like(q)
    for b in range(q.shape[0]):
        for h in range(q.shape[2]):
            s = q[b, :, h] @ k[b, :, h].T / q.shape[-1] ** 0.5
            out[b, :, h] = torch.softmax(s, dim=-1) @ v[b, :, h]
    return out


@pytest.mark.parametrize("backend", ["sdpa", "math", "auto"])
def test_backends_match_the_formula(backend):
    q, k, v = _qkv()
    torch.testing.assert_close(attention(q, k, v, backend), _by_hand(q, k, v), rtol=1e-5, atol=1e-5)


def test_sdpa_and_math_agree_in_bf16_and_in_gradients():
    q, k, v = _qkv(dtype=torch.bfloat16)
    torch.testing.assert_close(attention(q, k, v, "sdpa").float(), attention(q, k, v, "math").float(),
                               rtol=2e-2, atol=2e-2)
    grads = []
    for backend in ("sdpa", "math"):
        leaves = [t.float().clone().requires_grad_() for t in (q, k, v)]
        attention(*leaves, backend).square().sum().backward()
        grads.append([t.grad for t in leaves])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_auto_picks_sdpa_on_cpu_and_logs_once(caplog):
    resolve_backend.__globals__["_log_choice"].cache_clear()
    with caplog.at_level(logging.INFO, logger="uniemox.models.attention"):
        assert resolve_backend("auto", torch.device("cpu")) == "sdpa"
        assert resolve_backend("auto", torch.device("cpu")) == "sdpa"
    assert sum("attention backend: sdpa" in r.message for r in caplog.records) == 1


def test_xformers_refused_where_it_cannot_run():
    with pytest.raises(UserError, match="xformers"):
        resolve_backend("xformers", torch.device("cpu"))
    with pytest.raises(UserError, match="unknown attention backend"):
        resolve_backend("flash9", torch.device("cpu"))


@pytest.mark.cuda
@pytest.mark.skipif(not (torch.cuda.is_available() and xformers_available()), reason="needs CUDA + xformers")
def test_xformers_matches_math_on_gpu():
    q, k, v = _qkv(b=4, n=197, h=12, d=64, dtype=torch.bfloat16, device="cuda")
    torch.testing.assert_close(attention(q, k, v, "xformers").float(), attention(q, k, v, "math").float(),
                               rtol=2e-2, atol=2e-2)


def test_attention_module_backends_agree():
    torch.manual_seed(0)
    x = torch.randn(2, 10, 48)
    mod = Attention(48, 4, backend="math")
    ref = mod(x)
    mod.backend = "sdpa"
    torch.testing.assert_close(mod(x), ref, rtol=1e-5, atol=1e-5)
