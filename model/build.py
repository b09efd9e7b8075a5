"""The layer and the model of `layer` and `model` scope: `transformers`' Llama modules with random
weights made from a seed (nothing is downloaded), shaped by a model preset (core/shapes.py).

Weights are drawn with standard deviation hidden^-1/2 (Llama's training init is 0.02), so that each
projection keeps its input's scale and the attention and MLP branches add to the residual stream at
its own scale: a wrong attention then shows in the layer's output instead of hiding under the
residual. The model is the embedding, K decoder layers and the final norm; no LM head (its logits
over every position at 128k tokens and batch 5 alone would need about 170 GB).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.case import Case, Scope
from ..core.shapes import ModelShape, model_shape
from ..kernels.tensors import torch_dtype


def llama_config(shape: ModelShape, layers: int, attn_implementation: str = "sdpa") -> object:
    from transformers import LlamaConfig

    config = LlamaConfig(
        vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.mlp,
        num_hidden_layers=layers, num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
        head_dim=shape.head_dim, max_position_embeddings=max(131072, 2 * 4096), rms_norm_eps=shape.norm_eps,
        rope_theta=shape.rope_theta, initializer_range=shape.hidden ** -0.5, attention_bias=False, mlp_bias=False,
        tie_word_embeddings=False, use_cache=False)
    config._attn_implementation = attn_implementation
    return config


@dataclass
class Built:
    """A case's module and its input: a decoder layer and hidden states (layer scope), or the
    model and token ids (model scope)."""

    module: torch.nn.Module
    scope: Scope
    rotary: torch.nn.Module  # the model's rotary embedding (layer scope applies it itself)

    @property
    def config(self) -> object:
        return self.module.config if self.scope is Scope.MODEL else self.module.self_attn.config

    def use(self, attn_implementation: str) -> None:
        self.config._attn_implementation = attn_implementation

    def forward(self, inputs: torch.Tensor, **kwargs: object) -> torch.Tensor:
        if self.scope is Scope.MODEL:
            return self.module(input_ids=inputs, use_cache=False, **kwargs).last_hidden_state
        positions = torch.arange(inputs.shape[1], device=inputs.device).unsqueeze(0)
        embeddings = self.rotary(inputs, position_ids=positions)
        out = self.module(inputs, attention_mask=None, position_ids=positions, position_embeddings=embeddings,
                          **kwargs)
        return out[0] if isinstance(out, tuple) else out


def build(case: Case, seed: int) -> Built:
    """The case's layer (scope layer) or model of `case.layers` layers (scope model), its weights
    drawn from `seed`, in the case's dtype on its device, in evaluation mode."""
    from transformers import LlamaModel
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    shape = model_shape(case.model)
    # built on SDPA: a model refuses an attention name not registered yet; each case selects its own
    config = llama_config(shape, max(1, case.layers))
    torch.manual_seed(seed)
    if case.device.startswith("cuda"):
        torch.cuda.manual_seed_all(seed)
    with torch.device(case.device):
        if case.scope is Scope.MODEL:
            module: torch.nn.Module = LlamaModel(config)
            rotary = module.rotary_emb
        else:
            module = LlamaDecoderLayer(config, layer_idx=0)
            _init_like_the_model(module, config.initializer_range)
            rotary = LlamaRotaryEmbedding(config=config)
    module = module.to(torch_dtype(case)).eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return Built(module, case.scope, rotary)


def _init_like_the_model(layer: torch.nn.Module, std: float) -> None:
    # A decoder layer built alone is not initialised by a PreTrainedModel: do what LlamaModel does.
    with torch.no_grad():
        for module in layer.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0.0, std)
            elif hasattr(module, "weight") and module.weight is not None and module.weight.dim() == 1:
                module.weight.fill_(1.0)


def make_input(case: Case, seed: int) -> torch.Tensor:
    """Standard normal hidden states (B, N, hidden) for a layer; uniform token ids (B, N) for a model.
    Drawn on the case's device: at 128k x 5 the hidden states are 2.7 G numbers, 15-20 s to draw on
    a CPU (the same seed gives the same inputs on one kind of device)."""
    shape = model_shape(case.model)
    generator = torch.Generator(device=case.device).manual_seed(seed)
    if case.scope is Scope.MODEL:
        return torch.randint(shape.vocab, (case.batch, case.seq_len), generator=generator, device=case.device)
    x = torch.randn(case.batch, case.seq_len, shape.hidden, generator=generator, dtype=torch.float32,
                    device=case.device)
    return x.to(torch_dtype(case))


def memory_estimate(case: Case) -> int:
    """Device bytes beyond the attention's own: the weights and the forward's largest activations
    (under no_grad, the larger of a layer's attention and MLP halves, below). A training step (modes bwd and
    fwd_bwd) adds the weights' gradients and, for every layer, what autograd saves for the
    backward: the norms' float32 inputs and outputs, the projections' inputs and outputs, Q and K
    before and after RoPE, the attention's output, and the MLP's gate, up, activation and product;
    the attention's own saved tensors are in its estimate."""
    shape = model_shape(case.model)
    es = case.element_size
    layers = max(1, case.layers)
    weights = layers * shape.layer_params() * es
    if case.scope is Scope.MODEL:
        weights += shape.vocab * shape.hidden * es
    tokens = case.batch * case.seq_len
    qkv = (shape.heads + 2 * shape.kv_heads) * shape.head_dim
    # Under no_grad a layer's peak is the larger of its two halves, not their sum (an H200 measured
    # 68.2 GB at 128k x 5 for llama3-8b, which the sum put at 122 GB and skipped): around the
    # attention it holds its input, the normed states and the norm's float32 copies, Q, K, V and the
    # attention's output; in the MLP its input, the residual, the normed states and three of the
    # MLP's inner tensors (the gate's activation, the up projection and their product).
    attention_half = tokens * ((3 * shape.hidden + qkv) * es + 2 * 4 * shape.hidden)
    mlp_half = tokens * (3 * shape.hidden + 3 * shape.mlp) * es
    forward = weights + max(attention_half, mlp_half)
    if not case.mode.needs_backward:
        return int(forward)
    saved = tokens * ((6 * shape.hidden + 4 * shape.mlp + 3 * qkv) * es + 4 * 4 * shape.hidden)
    output_and_gradient = 2 * tokens * shape.hidden * es
    return int(forward + weights + layers * saved + output_and_gradient)
