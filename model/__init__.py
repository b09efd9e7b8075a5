"""A Llama-shaped model around any tbench method, built on Hugging Face `transformers` (the
optional extra `model`): the methods as `transformers` attention implementations, the layer and
model of the `layer` and `model` scopes, and their float64 reference evaluation."""

from .attention import attention_name, register_attention

__all__ = ["attention_name", "register_attention"]
