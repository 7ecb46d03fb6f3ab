"""A GPT-2 style language model, in one file to read top to bottom.

Token and position embeddings feed a stack of pre-LayerNorm transformer blocks; each block is causal
self-attention followed by a GELU MLP, both added back onto the residual stream. A final LayerNorm and a
linear head (sharing its weight with the token embedding) turn each position into logits over the vocabulary.
GPTConfig, in model/configs.py beside the named sizes, gives the shape.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.nn import functional as F

from model.configs import GPTConfig
from model.loss import chunk_positions, chunked_cross_entropy


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.n_head = config.n_head
        self.dropout = config.dropout
        # query, key and value for every head in one matmul
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        # Set by a reader of the model (pipeline/interpret/): the attention weights are then written out and kept
        # in self.attention (B, n_head, T, T). Training leaves it off and keeps the fused kernel.
        self.keep_attention = False
        self.attention: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()  # batch, time (positions), channels (n_embd)
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, n_head, T, head_size): each head attends on its own slice of the channels
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if self.keep_attention:
            y = self._attention_written_out(q, k, v)
        else:
            # softmax(q k^T / sqrt(head_size)) v with a causal mask; flash attention where the device has it
            y = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
            )
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again
        return self.resid_dropout(self.c_proj(y))

    def _attention_written_out(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """What scaled_dot_product_attention computes (without dropout), with the weights kept to look at."""
        T = q.size(-2)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))
        future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(diagonal=1)
        weights = scores.masked_fill(future, float("-inf")).softmax(dim=-1)
        self.attention = weights.detach()
        return weights @ v


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate=config.gelu)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm: normalise the input of each sub-layer, and keep the residual stream itself untouched."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.context_length, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying: reading a token in and predicting it out use the same vectors (and save vocab x n_embd).
        self.transformer.wte.weight = self.lm_head.weight
        # Positions per chunk of the loss (model/loss.py); 0: the whole logits at once, as nanoGPT computes them.
        self.loss_chunk = chunk_positions(config.vocab_size)

        self.apply(self._init_weights)
        # GPT-2 scales the projections that write into the residual stream by 1/sqrt(2 * n_layer),
        # so the stream's variance does not grow with depth.
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters counted once (the tied head is the token embedding).

        non_embedding leaves out the token and position embeddings: the N of scaling laws.
        """
        total = sum(p.numel() for p in self.parameters())
        if non_embedding:
            total -= self.transformer.wte.weight.numel() + self.transformer.wpe.weight.numel()
        return total

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Without targets, the last position's logits (all generation needs). With targets, the mean
        cross-entropy, and no logits: they are made a chunk at a time inside the loss (all of them when
        loss_chunk is 0)."""
        B, T = idx.size()
        if T > self.config.context_length:
            raise ValueError(f"sequence of {T} tokens is longer than the context ({self.config.context_length})")
        pos = torch.arange(T, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        if targets is None:
            # Generation needs only the last position: skip the big vocab matmul everywhere else.
            return self.lm_head(x[:, [-1], :]), None
        if self.loss_chunk:
            return None, chunked_cross_entropy(x, self.lm_head.weight, targets, self.loss_chunk)
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        vocab_size: int | None = None,
    ) -> torch.Tensor:
        """Extend idx (B, T) by sampling one token at a time; the context slides once it is full. vocab_size: the
        tokenizer's real vocabulary, whose ids alone are drawn (None: every row of the padded embedding)."""
        for _ in range(max_new_tokens):
            idx_cond = idx[:, -self.config.context_length :]
            logits, _ = self(idx_cond)
            logits = logits[:, -1, :]
            logits[:, vocab_size:] = float("-inf")  # padding rows are not tokens
            if temperature <= 0:  # greedy
                next_token = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k:
                    # Drawn among the k likeliest alone: a draw over all 50,304 ids is most of a sample's time.
                    logits, ids = torch.topk(logits, min(top_k, logits.size(-1)))
                choice = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1, generator=generator)
                next_token = ids.gather(-1, choice) if top_k else choice
            idx = torch.cat((idx, next_token), dim=1)
        return idx
