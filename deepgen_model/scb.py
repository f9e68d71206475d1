"""The Stacked Channel Bridging (SCB) connector (SCB): think tokens, projectors and the connector (docs/inference.md#scb-connector).

Module and parameter names equal the release's key names, so a state dict from
`connector/model.safetensors` (or the `connector.*`, `projector_*`, `meta_queries` keys of the
native `model.pt`) loads with `load_state_dict(strict=True)`.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class SCBConfig:
    """Sizes of the SCB. Defaults are the released DeepGen 1.0 values."""

    llm_hidden_size: int = 2048  # Qwen2.5-VL-3B text hidden size
    num_stacked_layers: int = 6  # hidden states 35, 29, 23, 17, 11, 5
    hidden_size: int = 2048  # connector width
    num_attention_heads: int = 32
    intermediate_size: int = 11946
    num_hidden_layers: int = 6
    layer_norm_eps: float = 1e-6
    num_queries: int = 128  # think tokens
    pooled_projection_dim: int = 2048  # DiT pooled_projection_dim
    joint_attention_dim: int = 4096  # DiT joint_attention_dim

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "SCBConfig":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    @classmethod
    def from_state_dict(cls, sd: dict, num_attention_heads: int | None = None) -> "SCBConfig":
        """Read every size from tensor shapes; the head count is not visible in shapes."""
        p1 = sd["projector_1.weight"]
        layers = {int(k.split(".")[2]) for k in sd if k.startswith("connector.layers.")}
        q = sd["meta_queries"]
        hidden = p1.shape[0]
        return cls(
            llm_hidden_size=q.shape[1],
            num_stacked_layers=p1.shape[1] // q.shape[1],
            hidden_size=hidden,
            num_attention_heads=num_attention_heads or cls.num_attention_heads,
            intermediate_size=sd["connector.layers.0.mlp.fc1.weight"].shape[0],
            num_hidden_layers=len(layers),
            num_queries=q.shape[0],
            pooled_projection_dim=sd["projector_2.weight"].shape[0],
            joint_attention_dim=sd["projector_3.weight"].shape[0],
        )


class ConnectorAttention(nn.Module):
    """Bidirectional multi-head attention: no mask, no positions (every token sees every token)."""

    def __init__(self, cfg: SCBConfig):
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.out_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = (p(x).view(b, n, self.num_heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(q, k, v)  # softmax scale 1/sqrt(head_dim), as the release
        return self.out_proj(out.transpose(1, 2).reshape(b, n, c))


class ConnectorMLP(nn.Module):
    def __init__(self, cfg: SCBConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class ConnectorLayer(nn.Module):
    """Pre-LN encoder layer: x + attn(LN1 x), then x + mlp(LN2 x)."""

    def __init__(self, cfg: SCBConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.self_attn = ConnectorAttention(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = ConnectorMLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class ConnectorEncoder(nn.Module):
    def __init__(self, cfg: SCBConfig):
        super().__init__()
        self.layers = nn.ModuleList(ConnectorLayer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x  # no final norm


class SCBConnector(nn.Module):
    """VLM hidden states (stacked on channels) -> DiT context `seq` and `pooled` vectors."""

    def __init__(self, cfg: SCBConfig | None = None):
        super().__init__()
        self.config = cfg = cfg or SCBConfig()
        self.meta_queries = nn.Parameter(torch.zeros(cfg.num_queries, cfg.llm_hidden_size))
        self.projector_1 = nn.Linear(cfg.llm_hidden_size * cfg.num_stacked_layers, cfg.hidden_size)
        self.connector = ConnectorEncoder(cfg)
        self.projector_2 = nn.Linear(cfg.hidden_size, cfg.pooled_projection_dim)
        self.projector_3 = nn.Linear(cfg.hidden_size, cfg.joint_attention_dim)

    def forward(self, stacked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """stacked [B, L, 6*H] -> (seq [B, L, joint_attention_dim], pooled [B, pooled_projection_dim]).

        The pooled mean runs over all L positions, pads included (docs/inference.md#scb-connector, #pitfall-1)."""
        x = self.connector(self.projector_1(stacked))
        return self.projector_3(x), self.projector_2(x.mean(dim=1))
