"""The FlexAttention block mask built from the band's geometry (methods/flex.py) against the
library's own builder, block by block, and the attention it gives against a dense masked SDPA."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tbench.methods.flex import BLOCK, _causal, _in_window, band_block_mask

flex = pytest.importorskip("torch.nn.attention.flex_attention")

CASES = [(n, w) for n in (256, 384, 300) for w in (None, 1, 128, 129, 200, 5000)]


def _mask_mod(window: int | None):
    return _causal if window is None else _in_window(window)


@pytest.mark.parametrize(("n", "window"), CASES)
def test_blocks_match_the_library_builder(n, window):
    mine = band_block_mask(n, window, _mask_mod(window), "cpu")
    ref = flex.create_block_mask(_mask_mod(window), None, None, n, n, device="cpu", BLOCK_SIZE=BLOCK, _compile=False)
    assert torch.equal(mine.to_dense(), ref.to_dense())
    if n % BLOCK == 0:  # at a ragged end the library may call a cut-off block full; ours keeps its mask
        assert torch.equal(mine.kv_num_blocks, ref.kv_num_blocks)
        assert torch.equal(mine.full_kv_num_blocks, ref.full_kv_num_blocks)


@pytest.mark.parametrize(("n", "window"), [(300, None), (384, 129), (256, 1)])
def test_attention_through_the_mask_is_the_banded_attention(n, window):
    generator = torch.Generator().manual_seed(n)
    q, k, v = (torch.randn(1, 2, n, 16, generator=generator) for _ in range(3))
    out = flex.flex_attention(q, k, v, block_mask=band_block_mask(n, window, _mask_mod(window), "cpu"))
    i = torch.arange(n)
    allowed = (i[None] <= i[:, None]) & (i[:, None] - i[None] < (window or n + 1))
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=allowed), atol=1e-5, rtol=0)


def test_a_band_one_key_too_wide_is_caught():
    """The comparisons above can fail: a band one key wider changes the attention (inside the
    blocks) and, for a wide enough step, which blocks are full."""
    n = 384
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, n, 16, generator=generator) for _ in range(3))
    i = torch.arange(n)
    allowed = (i[None] <= i[:, None]) & (i[:, None] - i[None] < 128)
    wider = flex.flex_attention(q, k, v, block_mask=band_block_mask(n, 129, _mask_mod(129), "cpu"))
    assert not torch.allclose(wider, F.scaled_dot_product_attention(q, k, v, attn_mask=allowed), atol=1e-3)
    ref = flex.create_block_mask(_mask_mod(128), None, None, n, n, device="cpu", BLOCK_SIZE=BLOCK, _compile=False)
    assert not torch.equal(band_block_mask(n, 257, _mask_mod(257), "cpu").full_kv_num_blocks, ref.full_kv_num_blocks)
