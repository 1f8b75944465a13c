"""MAR backbone (Li et al. 2024, "Autoregressive Image Generation without Vector
Quantization", LTH14/mar `models/mar.py`) with a text prefix in place of the class buffer,
as in IMPACT (Huang et al. 2025).

Encoder (MAE-style): projected text tokens ⊕ the *visible* audio tokens only.
Decoder: the encoder output with a learned mask token re-inserted at every masked
position, text prefix included (MAR's buffer tokens also pass through its decoder).
Output z (B, N, D) at every audio position, plus a learned "diffusion" positional
embedding so each token's head knows where it is.

Positions (`model.pos_embed`): "learned" adds MAR's absolute embeddings to the encoder and
decoder inputs; "rope" instead rotates queries and keys in every attention by the token's
(latent time, frequency patch) position, text prefix at position 0. With learned
embeddings (std 0.02 at init) next to a token projection of std ~2, our first teacher
ignored where its context was (shuffling the visible tokens changed nothing); rotary
positions cannot be drowned by content because they act on q·k, not on the inputs.

Rows may have different numbers of visible tokens (inpainting masks differ per row):
visible tokens are gathered into a padded (B, V_max, D) tensor with a key mask, so a
row's result does not depend on the other rows of the batch.

`forward` reads as MAR's: `encode` (text ⊕ visible tokens) → `mask_tokens` → `decode`
(memory among the mask tokens) → `guide`. Variants are subclasses chosen once by
`build_backbone`: `NoiseInputBackbone` (noise joins the mask tokens) and `GuidedBackbone`
(a guidance head on the output).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from energytta.config_rules import GUIDANCE_HEADS, POS_EMBEDS, check_value  # noqa: F401
from energytta.errors import UserError
from energytta.models.blocks import Block, RopeTables, Rotary, init_weights


class GuidanceHead(nn.Module):
    """One-pass guidance: z_g(w) = z + (w − 1)·Δ(z), Δ predicted from the conditional pass.

    The two-pass guided features z_u + w·(z_c − z_u) are exactly linear in w with slope
    z_c − z_u, so the head predicts that slope from the conditional features alone and any
    scale (or schedule of scales) is one multiply-add: nothing about w has to be learned.
    Δ is an MLP per token ("mlp"), or the same MLP after one transformer block over all
    tokens ("attention"), so each token's slope can read its context as z_u does. The last
    layer starts at zero: a student built from its reference starts as it.

    Args:
        dim: D, the backbone width.
        heads: attention heads of the "attention" form; None = the per-token MLP.
    """

    def __init__(self, dim: int, heads: int | None = None) -> None:
        super().__init__()
        self.block = None if heads is None else Block(dim, heads, mlp_ratio=2.0)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.hidden = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(2 * dim, dim)

    def forward(self, z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """z (B, N, D) conditional features, w (B,) -> guided features (B, N, D)."""
        h = z if self.block is None else self.block(z, None)
        delta = self.out(nn.functional.gelu(self.hidden(self.norm(h))))
        return z + (w[:, None, None] - 1).to(z.dtype) * delta


class Memory(NamedTuple):
    """What the encoder hands the decoder (shapes: B rows, Lp text, V visible, N tokens)."""

    x: torch.Tensor  # (B, Lp + V, D) encoded text ⊕ visible tokens, at the decoder's width
    text_mask: torch.Tensor  # (B, Lp) key mask of the text prefix
    index: torch.Tensor  # (B, V) positions of the visible tokens
    valid: torch.Tensor  # (B, V) which of them are real (the rest pad shorter rows)
    num_tokens: int  # N


class MARBackbone(nn.Module):
    """Bidirectional masked encoder-decoder over continuous audio tokens.

    Args:
        model_cfg: `Config.model` (width, depths, heads, dropout, grad_checkpointing).
        token_dim: d, the size of one audio token (C·pt·pf).
        max_tokens: longest token sequence (positional embeddings are sliced `[:N]`).
        text_dim: Dt, width of the text encoder's states.
        max_text_len: longest text prefix (learned text positions).
        null_text_len: length of the learned null text used when `drop_text` is set.
        freq_tokens: tokens per latent time step (F / patch_f; token n sits at time
            n // freq_tokens, frequency patch n % freq_tokens: the order is time-major).
    """

    def __init__(self, model_cfg: Any, token_dim: int, max_tokens: int, text_dim: int,
                 max_text_len: int = 128, null_text_len: int = 1, freq_tokens: int = 1) -> None:
        super().__init__()
        D = model_cfg.width
        self.pos_embed = getattr(model_cfg, "pos_embed", "learned")
        check_value("model.pos_embed", self.pos_embed)
        self.freq_tokens = max(1, freq_tokens)
        self.token_dim, self.max_tokens, self.max_text_len = token_dim, max_tokens, max_text_len
        self.grad_checkpointing = model_cfg.grad_checkpointing

        def blocks(depth: int) -> nn.ModuleList:
            return nn.ModuleList([
                Block(D, model_cfg.num_heads, model_cfg.mlp_ratio, model_cfg.dropout,
                      model_cfg.attn_dropout) for _ in range(depth)])

        # encoder: inputs, text prefix (replaces MAR's class buffer), positions
        self.z_proj = nn.Linear(token_dim, D)
        self.text_proj = nn.Linear(text_dim, D)
        self.null_text = nn.Parameter(torch.zeros(1, null_text_len, D))  # MAR's fake_latent
        self.encoder_text_pos = nn.Parameter(torch.zeros(1, max_text_len, D))
        learned = self.pos_embed == "learned"
        self.encoder_pos = nn.Parameter(torch.zeros(1, max_tokens, D)) if learned else None
        self.z_proj_ln = nn.LayerNorm(D, eps=1e-6)
        self.encoder_blocks = blocks(model_cfg.encoder_depth)
        self.encoder_norm = nn.LayerNorm(D, eps=1e-6)
        # decoder
        self.decoder_embed = nn.Linear(D, D)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, D))
        self.decoder_text_pos = nn.Parameter(torch.zeros(1, max_text_len, D))
        self.decoder_pos = nn.Parameter(torch.zeros(1, max_tokens, D)) if learned else None
        self.rotary = None if learned else Rotary(
            D // model_cfg.num_heads, axes=2 if self.freq_tokens > 1 else 1)
        self.decoder_blocks = blocks(model_cfg.decoder_depth)
        self.decoder_norm = nn.LayerNorm(D, eps=1e-6)
        self.diffusion_pos = nn.Parameter(torch.zeros(1, max_tokens, D))
        self._add_variant_parts(model_cfg, token_dim, D)
        self.out_dim = D
        self._init_weights()

    def _add_variant_parts(self, model_cfg: Any, token_dim: int, D: int) -> None:
        """Where a variant (subclass) adds its modules: after the decoder, before the
        weights are initialised (so a plain backbone's draws stay what they were)."""

    def _init_weights(self) -> None:
        self.apply(init_weights)
        for p in (self.null_text, self.encoder_text_pos, self.encoder_pos, self.mask_token,
                  self.decoder_text_pos, self.decoder_pos, self.diffusion_pos):
            if p is not None:
                nn.init.normal_(p, std=0.02)  # MAR: embeddings and mask token ~ N(0, .02²)

    # ------------------------------------------------------------------ pieces
    def _run(self, blocks: nn.ModuleList, x: torch.Tensor, key_mask: torch.Tensor,
             hidden: list[torch.Tensor] | None = None, skip: int = 0,
             rope: RopeTables | None = None) -> torch.Tensor:
        """Apply `blocks`; append each output's positions `[skip:]` to `hidden` if given."""
        ckpt = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        for blk in blocks:
            x = (checkpoint(blk, x, key_mask, rope, use_reentrant=False) if ckpt
                 else blk(x, key_mask, rope))
            if hidden is not None:
                hidden.append(x[:, skip:])
        return x

    def _text_prefix(self, text: torch.Tensor, text_mask: torch.Tensor,
                     drop_text: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Project the text; rows with `drop_text` get the learned null text instead.

        Returns (B, L', D) embeddings (no positions yet) and their (B, L') key mask.
        """
        B, L, _ = text.shape
        emb, mask = self.text_proj(text), text_mask.bool()
        if drop_text is None:
            return emb, mask
        Ln = self.null_text.shape[1]
        Lp = max(L, Ln)
        emb = nn.functional.pad(emb, (0, 0, 0, Lp - L))
        mask = nn.functional.pad(mask, (0, Lp - L), value=False)
        null = nn.functional.pad(self.null_text, (0, 0, 0, Lp - Ln)).to(emb.dtype)
        null_mask = torch.arange(Lp, device=mask.device) < Ln
        drop = drop_text.to(device=emb.device, dtype=torch.bool)
        emb = torch.where(drop[:, None, None], null, emb)
        mask = torch.where(drop[:, None], null_mask[None], mask)
        return emb, mask

    def _rope(self, positions: torch.Tensor, text_len: int) -> RopeTables | None:
        """Rotary tables for [text prefix ⊕ audio tokens at `positions` (B, S) token indices].

        The text prefix sits at position 0 (no rotation); audio token n at
        (time n // freq_tokens, frequency n % freq_tokens), or time n alone when each
        time step is one token. None with learned positions.
        """
        if self.rotary is None:
            return None
        B = positions.shape[0]
        if self.freq_tokens > 1:
            pos = torch.stack([positions // self.freq_tokens, positions % self.freq_tokens], -1)
        else:
            pos = positions[..., None]
        pos = torch.cat([pos.new_zeros(B, text_len, pos.shape[-1]), pos], 1)  # (B, Lp+S, axes)
        return self.rotary(pos)

    @staticmethod
    def _visible_index(mask: torch.Tensor, max_visible: int | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N) audio mask -> gather index (B, V) of visible positions and validity (B, V).

        V is the largest visible count in the batch (`max_visible` when the caller knows it,
        which spares a device->host sync); shorter rows are padded with masked positions
        (distinct from their visible ones) that are flagged invalid.
        """
        counts = (~mask).sum(1)  # (B,)
        if max_visible is not None:
            V = max_visible
        else:
            V = int(counts.max()) if mask.numel() else 0
        # a stable sort puts each row's visible positions first, in their original order
        order = torch.argsort(mask.to(torch.uint8), dim=1, stable=True)
        valid = torch.arange(V, device=mask.device)[None] < counts[:, None]
        return order[:, :V], valid

    def _check_inputs(self, tokens: torch.Tensor, text: torch.Tensor) -> None:
        B, N, d = tokens.shape
        if N > self.max_tokens or d != self.token_dim:
            raise ValueError(f"tokens {tuple(tokens.shape)} do not fit this backbone "
                             f"(max_tokens={self.max_tokens}, token_dim={self.token_dim})")
        if text.shape[1] > self.max_text_len:
            raise UserError(f"the prompt has {text.shape[1]} text tokens but the model holds "
                            f"at most {self.max_text_len}; lower text.max_length")

    @staticmethod
    def _check_text_keys(txt_mask: torch.Tensor) -> None:
        has_key = txt_mask.any(1).all()  # a row with no key at all would give NaN
        if txt_mask.is_cuda:  # checked on the device, without stalling the host
            torch._assert_async(has_key, "every row needs at least one real text token")
        elif not bool(has_key):
            raise ValueError("every row needs at least one real text token (text_mask)")

    # ------------------------------------------------------------------ stages
    def encode(self, tokens: torch.Tensor, mask: torch.Tensor, text: torch.Tensor,
               text_mask: torch.Tensor, drop_text: torch.Tensor | None = None,
               max_visible: int | None = None) -> Memory:
        """MAR's `forward_mae_encoder`: the text prefix ⊕ the *visible* tokens only.

        Args: as `forward`. Returns the encoder's output, projected to the decoder's width.
        """
        N = tokens.shape[1]
        txt, txt_mask = self._text_prefix(text, text_mask, drop_text)
        self._check_text_keys(txt_mask)
        Lp = txt.shape[1]
        idx, valid = self._visible_index(mask, max_visible)  # (B, V), (B, V)
        audio = self.z_proj(tokens)  # MAR adds positions, then z_proj_ln
        if self.encoder_pos is not None:
            audio = audio + self.encoder_pos[:, :N]
        vis = torch.gather(audio, 1, idx[..., None].expand(-1, -1, audio.shape[-1]))
        vis = torch.where(valid[..., None], vis, torch.zeros_like(vis))  # never read masked
        x = self.z_proj_ln(torch.cat([txt + self.encoder_text_pos[:, :Lp], vis], 1))
        x = self._run(self.encoder_blocks, x, torch.cat([txt_mask, valid], 1),
                      rope=self._rope(idx, Lp))
        return Memory(self.decoder_embed(self.encoder_norm(x)), txt_mask, idx, valid, N)

    def mask_tokens(self, memory: Memory, noise: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, D) what the decoder sees at masked positions: the learned mask token
        (`noise` is for `NoiseInputBackbone`; a plain backbone ignores it)."""
        B, _, D = memory.x.shape
        return self.mask_token.to(memory.x.dtype).expand(B, memory.num_tokens, D)

    def decode(self, memory: Memory, mask_tokens: torch.Tensor, return_hidden: bool = False
               ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """MAR's `forward_mae_decoder`: the visible encodings scattered back among
        `mask_tokens` (B, N, D), text prefix included; returns z (B, N, D) with the
        "diffusion" positions added, and each block's audio outputs if `return_hidden`."""
        B, N, D = mask_tokens.shape
        Lp = memory.text_mask.shape[1]
        gidx = memory.index[..., None].expand(-1, -1, D)
        # padded slots keep their own position's mask token; one token expanded over all
        # positions (stride 0) is sliced, as the gradient of a plain backbone always was
        pad = (mask_tokens[:, :gidx.shape[1]] if mask_tokens.stride(1) == 0
               else torch.gather(mask_tokens, 1, gidx))
        vis = torch.where(memory.valid[..., None], memory.x[:, Lp:], pad)
        full = torch.scatter(mask_tokens, 1, gidx, vis)  # (B, N, D)
        if self.decoder_pos is not None:
            full = full + self.decoder_pos[:, :N]
        x = torch.cat([memory.x[:, :Lp] + self.decoder_text_pos[:, :Lp], full], 1)
        key_mask = torch.cat([memory.text_mask, full.new_ones(B, N, dtype=torch.bool)], 1)
        hidden: list[torch.Tensor] | None = [] if return_hidden else None
        rope = self._rope(torch.arange(N, device=full.device).expand(B, N), Lp)
        x = self._run(self.decoder_blocks, x, key_mask, hidden, skip=Lp, rope=rope)
        return self.decoder_norm(x)[:, Lp:] + self.diffusion_pos[:, :N], hidden

    def guide(self, z: torch.Tensor, guidance: torch.Tensor | None) -> torch.Tensor:
        """The output features at guidance scale `guidance` (`GuidedBackbone`); a plain
        backbone has no such input."""
        if guidance is not None:
            raise UserError("this checkpoint was not guidance-distilled (model.guidance_embed"
                            "=false): guide it with two passes (sample.one_pass_cfg=false)")
        return z

    # ------------------------------------------------------------------ forward
    def forward(self, tokens: torch.Tensor, mask: torch.Tensor, text: torch.Tensor,
                text_mask: torch.Tensor, drop_text: torch.Tensor | None = None,
                return_hidden: bool = False, max_visible: int | None = None,
                noise: torch.Tensor | None = None, guidance: torch.Tensor | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """encode → mask tokens → decode → guide.

        Args:
            tokens: (B, N, d) audio tokens; values at masked positions are never read.
            mask: (B, N) bool, True = masked (to be predicted).
            text: (B, L, Dt) text-encoder states; text_mask: (B, L) bool, True = real token.
            drop_text: (B,) bool or None; True rows use the learned null text (CFG).
            return_hidden: also return each decoder block's output at audio positions.
            max_visible: the largest count of visible tokens in a row, if the caller knows
                it (the sampler does); it must be exact. None counts it (a host sync on GPU).
            noise: (B, N, d) Gaussian noise for a `NoiseInputBackbone` (added, projected,
                to the mask tokens); None = zeros. Other backbones ignore it.
            guidance: (B,) or scalar guidance scale w for a `GuidedBackbone` (one-pass CFG:
                z + (w − 1)·Δ(z)); None = the conditional model (w = 1).
        Returns z (B, N, D), or (z, [hidden (B, N, D)] * decoder_depth) (before the final norm).
        """
        self._check_inputs(tokens, text)
        memory = self.encode(tokens, mask.bool(), text, text_mask, drop_text, max_visible)
        z, hidden = self.decode(memory, self.mask_tokens(memory, noise), return_hidden)
        z = self.guide(z, guidance)
        return (z, hidden) if return_hidden else z


class NoiseInputBackbone(MARBackbone):
    """A one-pass generator's backbone (`model.noise_inputs`): projected Gaussian noise
    joins the decoder's mask tokens, so the noise can coordinate tokens (per-token head
    noise alone cannot). `noise_proj` starts at zero: built from a teacher, it starts as
    that teacher."""

    def _add_variant_parts(self, model_cfg: Any, token_dim: int, D: int) -> None:
        super()._add_variant_parts(model_cfg, token_dim, D)
        self.noise_proj = nn.Linear(token_dim, D)

    def _init_weights(self) -> None:
        super()._init_weights()
        nn.init.zeros_(self.noise_proj.weight)
        nn.init.zeros_(self.noise_proj.bias)

    def mask_tokens(self, memory: Memory, noise: torch.Tensor | None = None) -> torch.Tensor:
        tokens = super().mask_tokens(memory)
        if noise is None:
            return tokens
        return tokens + self.noise_proj(noise.to(memory.x.dtype))  # (B, N, D)


class GuidedBackbone(MARBackbone):
    """A guidance-distilled backbone (`model.guidance_embed`): one conditional pass and a
    `GuidanceHead` on its output give the guided features at any scale."""

    def _add_variant_parts(self, model_cfg: Any, token_dim: int, D: int) -> None:
        super()._add_variant_parts(model_cfg, token_dim, D)
        kind = getattr(model_cfg, "guidance_head", "mlp")
        check_value("model.guidance_head", kind)
        self.guidance_proj = GuidanceHead(D, model_cfg.num_heads if kind == "attention"
                                          else None)

    def _init_weights(self) -> None:
        super()._init_weights()
        nn.init.zeros_(self.guidance_proj.out.weight)  # starts as its reference
        nn.init.zeros_(self.guidance_proj.out.bias)

    def guide(self, z: torch.Tensor, guidance: torch.Tensor | None) -> torch.Tensor:
        if guidance is None:
            return z
        w = torch.as_tensor(guidance, device=z.device, dtype=z.dtype).expand(z.shape[0])
        return self.guidance_proj(z, w)


class NoiseInputGuidedBackbone(GuidedBackbone, NoiseInputBackbone):
    """Both: noise inputs, and a guidance head on the output."""


def build_backbone(model_cfg: Any, token_dim: int, max_tokens: int, text_dim: int,
                   **kw: Any) -> MARBackbone:
    """The backbone class the config names, chosen once (arguments as `MARBackbone`)."""
    noise = bool(getattr(model_cfg, "noise_inputs", False))
    guided = bool(getattr(model_cfg, "guidance_embed", False))
    cls = {(False, False): MARBackbone, (True, False): NoiseInputBackbone,
           (False, True): GuidedBackbone, (True, True): NoiseInputGuidedBackbone}
    return cls[noise, guided](model_cfg, token_dim, max_tokens, text_dim, **kw)
