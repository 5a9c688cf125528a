"""The encoder: embeddings, sparse layers, HST, pooling.

input_ids [B, n] -> embeddings -> internal sequence [B, L, d] (structure.py)
  -> L x (sparse attention + FFN, then HST hierarchical attention)
  -> per-token states [B, n, d], representatives [B, m, d], pooled [B, d]
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.utils.checkpoint
from torch import nn

from ..attention import KeyedLayout, sparse_attention
from ..attention.combiner import combiner_attention
from ..patterns import global_blocks, make_layout, pattern_parameters
from .checks import require
from .config import ModelConfig
from .hierarchical import hierarchical_attention, pool
from .layers import AttendFn, AttentionSublayer, FeedForwardSublayer, causal_attend
from .structure import SequencePlan, internal_key_mask, plan_sequence, representative_mask


@dataclass
class EncoderOutput:
    hidden_states: torch.Tensor  # [B, n, d] one state per input token
    attention_mask: torch.Tensor  # [B, n] bool, True at real tokens
    pooled: torch.Tensor  # [B, d] per config.hst.pooling
    representatives: torch.Tensor | None  # [B, m, d] with HST, else None
    representative_mask: torch.Tensor | None  # [B, m] False for all-padding blocks


class Embeddings(nn.Module):
    """Token + learned position (+ segment) embeddings; HST's representative embedding."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        width = config.hidden_size
        self.word = nn.Embedding(config.vocab_size, width)
        self.position = nn.Embedding(config.position_offset + config.max_positions, width)
        self.position_offset = config.position_offset
        self.token_type = (
            nn.Embedding(config.type_vocab_size, width) if config.type_vocab_size else None
        )
        # E(r): one learned vector shared by every representative token.
        self.representative = nn.Parameter(torch.zeros(width)) if config.hst.enabled else None
        self.block_positions = config.hst.enabled and config.hst.position == "block"
        self.norm = (
            nn.LayerNorm(width, eps=config.layer_norm_eps)
            if config.layer_norm == "post"
            else nn.Identity()
        )
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None,
        plan: SequencePlan,
    ) -> torch.Tensor:
        """[B, n] ids -> internal sequence [B, L, d] (zeros at unused positions)."""
        batch, seq_len = input_ids.shape
        positions = torch.arange(seq_len, device=input_ids.device) + self.position_offset
        tokens = self.word(input_ids) + self.position(positions)  # [B, n, d]
        if self.token_type is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            tokens = tokens + self.token_type(token_type_ids)
        hidden = tokens.new_zeros(batch, plan.length, tokens.shape[-1])
        hidden = hidden.index_copy(1, plan.token_positions.to(hidden.device), tokens)
        if self.representative is not None:
            rep_positions = plan.representative_positions.to(hidden.device)
            reps = self.representative.to(hidden.dtype).expand(batch, len(rep_positions), -1)
            if self.block_positions:
                reps = reps + self.position(self._first_token_positions(plan, input_ids.device))
            hidden = hidden.index_copy(1, rep_positions, reps)
        return self.dropout(self.norm(hidden))

    def _first_token_positions(self, plan: SequencePlan, device: torch.device) -> torch.Tensor:
        """[m] position ids of each local block's first input token (the last input
        token's for a block with none, which only a document of global tokens has)."""
        first = plan.num_global + torch.arange(plan.local_blocks) * plan.tokens_per_block
        return first.clamp_max(plan.input_len - 1).to(device) + self.position_offset


class EncoderLayer(nn.Module):
    """Sparse attention + FFN; then, with HST, attention among the representatives."""

    def __init__(self, config: ModelConfig, *, hierarchical: bool) -> None:
        super().__init__()
        self.attention = AttentionSublayer(config)
        self.feed_forward = FeedForwardSublayer(config)
        self.has_hierarchical = hierarchical
        own_weights = hierarchical and not config.hst.shared_weights
        self.hierarchical = AttentionSublayer(config) if own_weights else None
        with_feed_forward = hierarchical and config.hst.feed_forward
        self.hierarchical_feed_forward = FeedForwardSublayer(config) if with_feed_forward else None

    def hierarchical_sublayer(self) -> AttentionSublayer:
        """The hierarchical attention's weights: its own, or the sparse layer's (shared)."""
        return self.hierarchical if self.hierarchical is not None else self.attention


class PatternLayouts:
    """The per-layer block layouts of the configured pattern.

    Random blocks of layer l are drawn with seed ``attention.pattern_seed * 2**20 + l``
    (distinct for every (pattern_seed, layer) pair) and kept per shape (the same in training
    and evaluation). With ``attention.resample_pattern`` each training forward draws new ones from
    ``self.generator`` (checkpoint its state to resume). Each layout is keyed once, here
    (``KeyedLayout``), so every layer and step reuses what backends derive from it.
    """

    LAYERS_PER_SEED = 2**20

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.random = "generator" in pattern_parameters(config.attention.pattern)
        self.generator = torch.Generator().manual_seed(config.attention.pattern_seed)
        self._frozen: dict[tuple[int, int], list[KeyedLayout]] = {}

    def for_layers(self, plan: SequencePlan, *, training: bool) -> list[KeyedLayout]:
        count = self.config.num_layers
        if training and self.config.attention.resample_pattern and self.random:
            return [self._build(plan, self.generator) for _ in range(count)]
        key = (plan.num_blocks, plan.global_blocks)
        if key not in self._frozen:
            # Eager even under torch.compile (a graph break in the first compiled call of a
            # new shape only): the next call reads the built layouts off this dict.
            self._frozen[key] = torch.compiler.disable(self._build_frozen)(plan)
        return self._frozen[key]

    def _build_frozen(self, plan: SequencePlan) -> list[KeyedLayout]:
        count = self.config.num_layers
        if not self.random:
            return [self._build(plan, None)] * count
        seed = self.config.attention.pattern_seed
        seeds = [self.layer_seed(seed, layer) for layer in range(count)]
        return [self._build(plan, torch.Generator().manual_seed(s)) for s in seeds]

    @staticmethod
    def layer_seed(pattern_seed: int, layer: int) -> int:
        """The torch seed of one layer's random blocks: distinct for every (seed, layer)."""
        if not 0 <= layer < PatternLayouts.LAYERS_PER_SEED:
            raise ValueError(f"layer must be in [0, {PatternLayouts.LAYERS_PER_SEED}), got {layer}")
        seed = pattern_seed * PatternLayouts.LAYERS_PER_SEED + layer
        if not -(2**63) <= seed < 2**63:
            raise ValueError(f"pattern_seed={pattern_seed} is too large for per-layer seeds")
        return seed

    def _build(self, plan: SequencePlan, generator: torch.Generator | None) -> KeyedLayout:
        config = self.config
        params = dict(config.attention.pattern_params)
        takes_global = "num_global" in pattern_parameters(config.attention.pattern)
        if takes_global:
            params["num_global"] = plan.global_blocks
        layout = make_layout(
            config.attention.pattern,
            seq_len=plan.length,
            block_size=plan.block_size,
            num_heads=config.num_heads,
            generator=generator,
            **params,
        )
        if plan.global_blocks and not takes_global:
            layout = layout | global_blocks(plan.num_blocks, plan.global_blocks)
        return KeyedLayout(layout)


class Encoder(nn.Module):
    """ERNIE-Sparse encoder (and, by configuration, each baseline of the paper).

    ``config.attention.kind="combiner"`` swaps the block-sparse attention for a Combiner
    variant; ``config.causal=True`` makes it a decoder (each token sees earlier ones).

    ``final_representatives``: whether a head reads the representatives after the
    last layer (mean / max pooling). When it does not, the last layer's hierarchical
    attention could change no output, so it is not built (no unused parameters).
    """

    def __init__(self, config: ModelConfig, *, final_representatives: bool | None = None) -> None:
        super().__init__()
        self.config = config
        if final_representatives is None:
            final_representatives = config.hst.pooling != "cls"
        hst = config.hst.enabled
        last = config.num_layers - 1
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(
            EncoderLayer(config, hierarchical=hst and (i < last or final_representatives))
            for i in range(config.num_layers)
        )
        self.final_norm = (
            nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
            if config.layer_norm == "pre"
            else nn.Identity()
        )
        self.layouts = PatternLayouts(config)
        # Recompute each sparse layer in backward instead of keeping its activations.
        self.gradient_checkpointing = False
        self.apply(self._init_weights)
        if config.hst.init == "sparse":
            self.warm_start_hierarchical()

    def warm_start_hierarchical(self) -> None:
        """Each hierarchical attention starts as a copy of its layer's sparse attention
        (ERNIE-Sparse section 3.2's warm start; the weights train apart)."""
        for layer in self.layers:
            if layer.hierarchical is not None:
                layer.hierarchical.load_state_dict(layer.attention.state_dict())

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, Embeddings) and module.representative is not None:
            nn.init.normal_(module.representative, std=std)

    def plan(self, input_len: int) -> SequencePlan:
        config = self.config
        # Attention without a block layout needs no padding to whole blocks (HST does).
        unblocked = self._layout_free() and not config.hst.enabled
        # Compiled, the plan is traced into constants: skip the lru_cache wrapper (which
        # dynamo would warn about and ignore anyway).
        build = plan_sequence.__wrapped__ if torch.compiler.is_compiling() else plan_sequence
        return build(
            input_len,
            block_size=1 if unblocked else config.attention.block_size,
            num_global=config.attention.num_global,
            hst=config.hst.enabled,
            block_multiple=config.attention.block_multiple,
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> EncoderOutput:
        attention_mask = self._check_inputs(input_ids, attention_mask, token_type_ids)
        plan = self.plan(input_ids.shape[1])
        device = input_ids.device
        rep_mask = representative_mask(plan, attention_mask) if plan.hst else None
        key_mask = internal_key_mask(plan, attention_mask, rep_mask)
        # No masked key at all (no padding, whole blocks): let attention skip the mask,
        # which on CPU also lets dense rows use SDPA's memory-efficient kernel. Compiled,
        # the mask stays (exact either way): reading it back would break the graph.
        compiling = torch.compiler.is_compiling()
        sparse_key_mask = key_mask if compiling or not bool(key_mask.all()) else None
        hidden = self.embeddings(input_ids, token_type_ids, plan)
        layouts = self._layouts(plan)
        for layer, layout in zip(self.layers, layouts, strict=True):
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                hidden = torch.utils.checkpoint.checkpoint(
                    self._sparse_layer, layer, hidden, layout, sparse_key_mask, use_reentrant=False
                )
            else:
                hidden = self._sparse_layer(layer, hidden, layout, sparse_key_mask)
            if layer.has_hierarchical:
                hidden = self._hierarchical_layer(layer, hidden, plan, rep_mask)
        hidden = self.final_norm(hidden)
        tokens = hidden.index_select(1, plan.token_positions.to(device))  # [B, n, d]
        reps = None
        if plan.hst:
            reps = hidden.index_select(1, plan.representative_positions.to(device))  # [B, m, d]
        if reps is not None and self.config.hst.pooling != "cls":
            pooled = pool(reps, rep_mask, self.config.hst.pooling)
        else:
            pooled = pool(tokens, attention_mask, self.config.hst.pooling)
        return EncoderOutput(tokens, attention_mask, pooled, reps, rep_mask)

    def _hierarchical_layer(
        self,
        layer: EncoderLayer,
        hidden: torch.Tensor,
        plan: SequencePlan,
        rep_mask: torch.Tensor,
    ) -> torch.Tensor:
        hidden = hierarchical_attention(
            hidden,
            layer.hierarchical_sublayer(),
            plan=plan,
            representative_mask=rep_mask,
            dropout_p=self._attention_dropout(),
            distribute=self.config.hst.distribute,
        )
        if layer.hierarchical_feed_forward is None:
            return hidden
        positions = plan.representative_positions.to(hidden.device)
        reps = layer.hierarchical_feed_forward(hidden.index_select(1, positions))  # [B, m, d]
        return hidden.index_copy(1, positions, reps)

    def _layouts(self, plan: SequencePlan) -> list[KeyedLayout | None]:
        """One block layout per layer; none where the attention takes no layout."""
        if self._layout_free():
            return [None] * self.config.num_layers
        return self.layouts.for_layers(plan, training=self.training)

    def _layout_free(self) -> bool:
        """Combiner and dense causal attention take no block layout."""
        return self.config.attention.kind == "combiner" or self.config.causal

    def _sparse_layer(
        self,
        layer: EncoderLayer,
        hidden: torch.Tensor,
        layout: KeyedLayout | None,
        key_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        return layer.feed_forward(layer.attention(hidden, self._attend(layout, key_mask)))

    def _attend(self, layout: KeyedLayout | None, key_mask: torch.Tensor | None) -> AttendFn:
        """The configured attention: Combiner, dense causal, or the block-sparse layout."""
        config = self.config
        dropout_p = self._attention_dropout()
        if config.attention.kind == "combiner":
            return functools.partial(
                combiner_attention,
                variant=config.attention.combiner_variant,
                causal=config.causal,
                key_padding_mask=key_mask,
                span=config.combiner_partition,
                num_clusters=config.combiner_cluster_count,
                dropout_p=dropout_p,
            )
        if config.causal:  # the config allows only the dense pattern here
            return causal_attend(key_mask, dropout_p=dropout_p)

        def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return sparse_attention(
                q,
                k,
                v,
                layout,
                block_size=config.attention.block_size,
                key_padding_mask=key_mask,
                backend=config.attention.backend,
                dropout_p=dropout_p,
            )

        return attend

    def _attention_dropout(self) -> float:
        return self.config.attention.dropout if self.training else 0.0

    def _check_inputs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        token_type_ids: torch.Tensor | None,
    ) -> torch.Tensor:
        """Validate the inputs; returns the attention mask as bool [B, n]."""
        config = self.config
        check_ids("input_ids", input_ids, config.vocab_size)
        seq_len = input_ids.shape[1]
        if seq_len > config.max_positions:
            raise ValueError(
                f"input length {seq_len} exceeds max_positions={config.max_positions}; "
                "split or shorten the input (nothing is truncated silently)"
            )
        if token_type_ids is not None:
            if config.type_vocab_size == 0:
                raise ValueError("token_type_ids given but the config has type_vocab_size=0")
            check_ids("token_type_ids", token_type_ids, config.type_vocab_size)
            if token_type_ids.shape != input_ids.shape:
                raise ValueError(
                    f"token_type_ids {tuple(token_type_ids.shape)} must match input_ids "
                    f"{tuple(input_ids.shape)}"
                )
        mask = as_bool_mask(attention_mask, input_ids)
        has_token = mask.any(dim=1)  # [B]

        def first_empty() -> str:
            return f"sequence {int((~has_token).nonzero()[0])} has no real token (attention_mask)"

        require(has_token, "every sequence needs a real token (attention_mask)", first_empty)
        return mask


def check_ids(name: str, ids: torch.Tensor, vocab_size: int) -> None:
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
        shape = tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise ValueError(f"{name} must be a 2-d tensor [B, n], got {shape}")
    if ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name} must be int64 or int32 token ids, got {ids.dtype}")
    if ids.shape[1] == 0:
        raise ValueError(f"{name} has length 0")
    rule = f"{name} must be in [0, {vocab_size})"
    require(
        (ids >= 0) & (ids < vocab_size),
        rule,
        lambda: f"{rule}, found values in [{int(ids.min())}, {int(ids.max())}]",
    )


def as_bool_mask(attention_mask: torch.Tensor | None, input_ids: torch.Tensor) -> torch.Tensor:
    """None -> all real; bool or 0/1 integers [B, n] -> bool."""
    if attention_mask is None:
        return torch.ones_like(input_ids, dtype=torch.bool)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask {tuple(attention_mask.shape)} must match input_ids "
            f"{tuple(input_ids.shape)}"
        )
    if attention_mask.dtype != torch.bool:
        rule = "attention_mask must be bool or integers 0/1 (1 = real token)"
        if attention_mask.is_floating_point():
            raise ValueError(rule)
        require((attention_mask == 0) | (attention_mask == 1), rule)
        attention_mask = attention_mask.bool()
    return attention_mask.to(input_ids.device)
