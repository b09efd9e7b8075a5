"""Llama-shaped model presets for layer and model scope (no torch).

The shapes are those of the published models; the weights are random, made from the run's seed,
so nothing is downloaded. `tiny` is small enough for a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UsageError


@dataclass(frozen=True)
class ModelShape:
    name: str
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    mlp: int  # the SwiGLU MLP's inner width
    layers: int  # the published depth
    vocab: int
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5

    def layer_params(self) -> int:
        """Weights of one decoder layer: Q, K, V and O projections, the MLP's three, two norms."""
        qkv = self.hidden * (self.heads + 2 * self.kv_heads) * self.head_dim
        attention = qkv + self.heads * self.head_dim * self.hidden
        return attention + 3 * self.hidden * self.mlp + 2 * self.hidden


MODEL_SHAPES: dict[str, ModelShape] = {shape.name: shape for shape in (
    ModelShape("tiny", hidden=64, heads=4, kv_heads=2, head_dim=16, mlp=128, layers=2, vocab=256),
    ModelShape("llama3-8b", hidden=4096, heads=32, kv_heads=8, head_dim=128, mlp=14336, layers=32, vocab=128256,
               rope_theta=500000.0),
    ModelShape("llama2-7b", hidden=4096, heads=32, kv_heads=32, head_dim=128, mlp=11008, layers=32, vocab=32000),
    ModelShape("mistral-7b", hidden=4096, heads=32, kv_heads=8, head_dim=128, mlp=14336, layers=32, vocab=32000),
    ModelShape("openllama-3b", hidden=3200, heads=32, kv_heads=32, head_dim=100, mlp=8640, layers=26, vocab=32000),
)}


def model_shape(name: str) -> ModelShape:
    try:
        return MODEL_SHAPES[name]
    except KeyError:
        raise UsageError(f"model '{name}' unknown; allowed: {', '.join(MODEL_SHAPES)}") from None


def layer_forward_flops(shape: ModelShape, batch: int, seq_len: int) -> float:
    """Multiply-add flops of one layer's dense parts (projections and MLP), attention excluded."""
    return 2.0 * batch * seq_len * (shape.layer_params() - 2 * shape.hidden)
