"""The multi-view UNet: Stable Diffusion's UNet with MVDream's two changes.

1. Every transformer's self-attention runs over all views of an object (see ``attention.py``).
2. Each view's camera, a flattened 4x4 camera-to-world matrix (16 numbers, convention in
   ``mvdream3d.cameras``), goes through ``camera_embed`` = Linear(16, 4C) -> SiLU -> Linear(4C, 4C)
   and is added to the timestep embedding.

Batches are object-major: ``x`` is ``(B*F, C, H, W)`` with the F = ``num_frames`` views of object b in
rows ``b*F .. b*F+F-1``. ``num_frames=1, camera=None`` is a plain 2D text-to-image UNet.

The module tree mirrors the published ``MultiViewUNetModel`` (``time_embed``, ``camera_embed``,
``input_blocks``, ``middle_block``, ``output_blocks``, ``out``) so published weights load with
``load_state_dict(strict=True)``; the numerics follow it too (cos-then-sin timestep embedding,
GroupNorm(32) in float32 with eps 1e-5 in ResBlocks and 1e-6 in transformers, nearest upsampling,
strided-conv downsampling).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import BasicTransformerBlock3D, PreparedContext, SpatialTransformer3D


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``cat(cos(t f), sin(t f))`` of shape (N, dim), float32, as in LDM."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    )
    args = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the input dtype (the published ``normalization``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, w, b, self.eps).to(x.dtype)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, add the embedding, GroupNorm-SiLU-dropout-conv, plus a skip path."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int | None = None,
                 dropout: float = 0.0, use_scale_shift_norm: bool = False) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(
            GroupNorm32(32, channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels)
        )
        self.out_layers = nn.Sequential(
            GroupNorm32(32, out_channels), nn.SiLU(), nn.Dropout(dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        nn.init.zeros_(self.out_layers[3].weight)
        nn.init.zeros_(self.out_layers[3].bias)
        if out_channels == channels:
            self.skip_connection: nn.Module = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled() and not self.use_scale_shift_norm:
            return self._forward_inference(x, emb)
        h = self.in_layers(x)
        emb_out = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h

    def _forward_inference(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """The same computation with SiLU and the additions in place on tensors made here (no autograd)."""
        norm1, _, conv1 = self.in_layers
        norm2, _, dropout, conv2 = self.out_layers
        h = conv1(F.silu(norm1(x), inplace=True))
        h.add_(self.emb_layers(emb).to(h.dtype)[:, :, None, None])
        h = conv2(dropout(F.silu(norm2(h), inplace=True)))
        return h.add_(self.skip_connection(x))


class Downsample(nn.Module):
    """Stride-2 3x3 convolution (``op``), or 2x2 average pooling without ``use_conv``."""

    def __init__(self, channels: int, use_conv: bool = True) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling followed by a 3x3 convolution (``conv``)."""

    def __init__(self, channels: int, use_conv: bool = True) -> None:
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class TimestepEmbedSequential(nn.Sequential):
    """Runs its layers, handing the embedding to ResBlocks and context/num_frames to transformers."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | PreparedContext | None,
                num_frames: int, use_checkpoint: bool = False) -> torch.Tensor:
        for layer in self:
            x = _run_layer(layer, x, emb, context, num_frames, use_checkpoint)
        return x


def _run_layer(layer: nn.Module, x: torch.Tensor, emb: torch.Tensor,
               context: torch.Tensor | PreparedContext | None, num_frames: int, use_checkpoint: bool
               ) -> torch.Tensor:
    if isinstance(layer, ResBlock):
        if use_checkpoint and torch.is_grad_enabled():
            return checkpoint(layer, x, emb, use_reentrant=False)
        return layer(x, emb)
    if isinstance(layer, SpatialTransformer3D):
        return layer(x, context, num_frames)
    return layer(x)


# Keys of the published YAML that do not change the network (or only its precision) and are accepted.
_IGNORED_KEYS = {"image_size", "use_fp16", "use_bf16", "legacy", "use_spatial_transformer", "dims",
                 "use_new_attention_order", "num_heads_upsample", "n_embed"}


@dataclass
class UNetConfig:
    """Architecture of a :class:`MultiViewUNet`, with the names of the published YAML ``unet_config``.

    ``num_head_channels`` (SD 2.x) fixes the head width; otherwise ``num_heads`` (SD 1.x) fixes the
    head count. ``camera_dim=None`` builds a model without camera input. ``multiview_attention=False``
    keeps self-attention per view (the paper's ablation; not a published option).
    """

    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    attention_resolutions: Sequence[int] = (4, 2, 1)
    num_res_blocks: int | Sequence[int] = 2
    channel_mult: Sequence[int] = (1, 2, 4, 4)
    num_heads: int = -1
    num_head_channels: int = -1
    transformer_depth: int = 1
    context_dim: int | None = 1024
    use_linear_in_transformer: bool = False
    camera_dim: int | None = 16
    dropout: float = 0.0
    conv_resample: bool = True
    use_scale_shift_norm: bool = False
    resblock_updown: bool = False
    use_checkpoint: bool = False
    disable_self_attentions: Sequence[bool] | None = None
    num_attention_blocks: Sequence[int] | None = None
    disable_middle_self_attn: bool = False
    multiview_attention: bool = True
    num_classes: Any = field(default=None)

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> UNetConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - known - _IGNORED_KEYS)
        if unknown:
            raise ValueError(f"unknown UNet config keys {unknown}; known keys: {sorted(known)}")
        cfg = cls(**{k: v for k, v in params.items() if k in known})
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.num_heads == -1 and self.num_head_channels == -1:
            raise ValueError("UNet config needs num_heads or num_head_channels")
        if self.num_classes is not None:
            raise ValueError("class-conditional UNets (num_classes) are not supported")
        if self.resblock_updown:
            raise ValueError("resblock_updown=True is not supported (no published MVDream model uses it)")
        if self.disable_self_attentions and any(self.disable_self_attentions) or self.disable_middle_self_attn:
            raise ValueError("disable_self_attentions is not supported: MVDream relies on self-attention")
        nrb = self.num_res_blocks
        if not isinstance(nrb, int) and len(nrb) != len(self.channel_mult):
            raise ValueError("num_res_blocks must be an int or have one entry per channel_mult level")
        for c in [self.model_channels * m for m in self.channel_mult]:
            if c % 32:
                raise ValueError(f"channel count {c} is not divisible by 32 (GroupNorm(32) needs it)")

    def heads_for(self, ch: int) -> tuple[int, int]:
        """(number of heads, head width) of a transformer with ``ch`` channels."""
        if self.num_head_channels != -1:
            return ch // self.num_head_channels, self.num_head_channels
        return self.num_heads, ch // self.num_heads

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


class MultiViewUNet(nn.Module):
    """Stable Diffusion UNet with 3D self-attention and camera conditioning (MVDream).

    ``forward(x, timesteps, context=None, camera=None, num_frames=1)``:
      - ``x``: (B*F, C, H, W), object-major; H and W divisible by ``2**(len(channel_mult)-1)``.
      - ``timesteps``: (B*F,) or (B,) or a scalar, integer or float diffusion steps.
      - ``context``: (B*F, L, context_dim) text embeddings, one row per view (a (B, L, D) tensor is
        repeated over the views of each object).
      - ``camera``: (B*F, 16) flattened c2w matrices or (B*F, 4, 4); None for no camera.
    Returns the prediction (eps or v, whatever the weights were trained for), shape (B*F, out, H, W).
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        # Layout of the activations between layers. "auto": on CPU, channels-last (NHWC) for the feature maps
        # whose activations outweigh a 3x3 convolution's weights (N*H*W >= 9*C: the high resolutions), where
        # oneDNN convolutions are faster with them and the transformers' (N, H*W, C) token view is free; the
        # default layout for the others, where a channels-last input makes the convolution copy its weights
        # into that layout on every call (at the sd-v2.1 width, 59-118 MB per 1280-channel convolution, and
        # slower); the default layout on other devices. "channels_last" / "contiguous" force one. Outputs are
        # always contiguous (N, C, H, W).
        self.memory_format: str = "auto"
        c = config
        mc = c.model_channels
        emb_dim = mc * 4
        nrb = [c.num_res_blocks] * len(c.channel_mult) if isinstance(c.num_res_blocks, int) \
            else list(c.num_res_blocks)
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if c.camera_dim is not None:
            self.camera_embed = nn.Sequential(
                nn.Linear(c.camera_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
            )

        def transformer(ch: int) -> SpatialTransformer3D:
            heads, d_head = c.heads_for(ch)
            return SpatialTransformer3D(
                ch, heads, d_head, c.transformer_depth, c.context_dim, c.use_linear_in_transformer,
                c.dropout, c.multiview_attention, c.use_checkpoint,
            )

        def resblock(cin: int, cout: int) -> ResBlock:
            return ResBlock(cin, emb_dim, cout, c.dropout, c.use_scale_shift_norm)

        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(c.in_channels, mc, 3, padding=1))])
        skip_channels = [mc]
        ch, ds = mc, 1
        for level, mult in enumerate(c.channel_mult):
            for nr in range(nrb[level]):
                layers: list[nn.Module] = [resblock(ch, mult * mc)]
                ch = mult * mc
                if ds in c.attention_resolutions and (
                    c.num_attention_blocks is None or nr < c.num_attention_blocks[level]
                ):
                    layers.append(transformer(ch))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(c.channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch, c.conv_resample)))
                skip_channels.append(ch)
                ds *= 2
        self.middle_block = TimestepEmbedSequential(resblock(ch, ch), transformer(ch), resblock(ch, ch))
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(c.channel_mult))):
            for i in range(nrb[level] + 1):
                layers = [resblock(ch + skip_channels.pop(), mc * mult)]
                ch = mc * mult
                if ds in c.attention_resolutions and (
                    c.num_attention_blocks is None or i < c.num_attention_blocks[level]
                ):
                    layers.append(transformer(ch))
                if level and i == nrb[level]:
                    layers.append(Upsample(ch, c.conv_resample))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(GroupNorm32(32, ch), nn.SiLU(), nn.Conv2d(mc, c.out_channels, 3, padding=1))
        nn.init.zeros_(self.out[2].weight)
        nn.init.zeros_(self.out[2].bias)

    @classmethod
    def from_config(cls, params: Mapping[str, Any] | UNetConfig) -> MultiViewUNet:
        """Build from the published YAML's ``unet_config.params`` mapping (or a :class:`UNetConfig`)."""
        cfg = params if isinstance(params, UNetConfig) else UNetConfig.from_params(params)
        return cls(cfg)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.config.channel_mult) - 1)

    @property
    def has_camera(self) -> bool:
        return self.config.camera_dim is not None

    def enable_gradient_checkpointing(self, enabled: bool = True) -> None:
        self.config.use_checkpoint = enabled
        for m in self.modules():
            if isinstance(m, SpatialTransformer3D):
                m.use_checkpoint = enabled

    def _check_inputs(self, x: torch.Tensor, timesteps: torch.Tensor | float,
                      context: torch.Tensor | PreparedContext | None, camera: torch.Tensor | None, num_frames: int
                      ) -> tuple[torch.Tensor, torch.Tensor | PreparedContext | None, torch.Tensor | None]:
        """Check the inputs' shapes (errors that name the expected shape); returns timesteps (B*F,), the
        context with one row per view and the camera as (B*F, camera_dim)."""
        self._check_batch(x, num_frames)
        n = x.shape[0]
        return (self._per_view_timesteps(timesteps, x, num_frames), self._per_view_context(context, n, num_frames),
                self._flat_camera(camera, n))

    def _check_batch(self, x: torch.Tensor, num_frames: int) -> None:
        c = self.config
        if x.ndim != 4 or x.shape[1] != c.in_channels:
            raise ValueError(f"x must be (B*F, {c.in_channels}, H, W), got {tuple(x.shape)}")
        if not isinstance(num_frames, int) or num_frames < 1:
            raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")
        if x.shape[0] % num_frames:
            raise ValueError(
                f"batch size {x.shape[0]} is not divisible by num_frames={num_frames}: the batch must hold "
                f"B objects x {num_frames} views, object-major"
            )
        f = self.downsample_factor
        if x.shape[2] % f or x.shape[3] % f:
            raise ValueError(f"H and W must be divisible by {f} for this UNet, got {tuple(x.shape[2:])}")

    @staticmethod
    def _per_view_timesteps(timesteps: torch.Tensor | float, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        n = x.shape[0]
        t = torch.as_tensor(timesteps, device=x.device)
        if t.ndim == 0:
            t = t.expand(n)
        elif t.shape[0] == n // num_frames and num_frames > 1:
            t = t.repeat_interleave(num_frames)
        if t.shape != (n,):
            raise ValueError(f"timesteps must be a scalar, (B,) or (B*F,) = ({n},), got {tuple(t.shape)}")
        return t

    def _per_view_context(self, context: torch.Tensor | PreparedContext | None, n: int, num_frames: int
                          ) -> torch.Tensor | PreparedContext | None:
        c = self.config
        if isinstance(context, PreparedContext):
            if context.tensor.shape[0] != n:
                raise ValueError(f"the prepared context has {context.tensor.shape[0]} rows, expected {n} (one per "
                                 "view): prepare_context the (B*F, L, D) context of this batch")
        elif context is not None:
            if context.ndim != 3 or context.shape[-1] != c.context_dim:
                raise ValueError(f"context must be (B*F, L, {c.context_dim}), got {tuple(context.shape)}")
            if context.shape[0] == n // num_frames and num_frames > 1:
                context = context.repeat_interleave(num_frames, dim=0)
            if context.shape[0] != n:
                raise ValueError(f"context has {context.shape[0]} rows, expected {n} (one per view)")
        elif c.context_dim is not None:
            raise ValueError("this UNet cross-attends to text: pass context (B*F, L, context_dim)")
        return context

    def _flat_camera(self, camera: torch.Tensor | None, n: int) -> torch.Tensor | None:
        if camera is None:
            return None
        c = self.config
        if not self.has_camera:
            raise ValueError("this UNet has no camera input (camera_dim=None): pass camera=None")
        if camera.ndim == 3 and camera.shape[1:] == (4, 4):
            camera = camera.reshape(camera.shape[0], 16)
        if camera.ndim != 2 or camera.shape != (n, c.camera_dim):
            raise ValueError(
                f"camera must be (B*F, {c.camera_dim}) flattened c2w matrices (or (B*F, 4, 4)) with "
                f"B*F = {n}, got {tuple(camera.shape)}"
            )
        return camera

    def prepare_context(self, context: torch.Tensor) -> PreparedContext:
        """``context`` (B*F, L, context_dim) with every cross-attention layer's keys and values computed.

        Pass the result as ``context`` to :meth:`forward` for as many calls as the context stays the same
        (a sampling run, a text-to-3D optimisation): the output is the one the tensor gives, without the
        ``to_k`` / ``to_v`` products in every call. It needs the full B*F rows of the batch it is used with.
        """
        c = self.config
        if context.ndim != 3 or context.shape[-1] != c.context_dim:
            raise ValueError(f"context must be (B*F, L, {c.context_dim}), got {tuple(context.shape)}")
        context = context.to(self.time_embed[0].weight.dtype)
        kv = {m.attn2: m.attn2.context_kv(context) for m in self.modules() if isinstance(m, BasicTransformerBlock3D)}
        return PreparedContext(context, kv)

    def _to_layout(self, h: torch.Tensor) -> torch.Tensor:
        """``h`` (N, C, H, W) in the layout :attr:`memory_format` chooses for its shape (a copy only on a change)."""
        mode = self.memory_format
        if mode == "auto":
            n, c, height, width = h.shape
            channels_last = h.device.type == "cpu" and n * height * width >= 9 * c
        else:
            channels_last = mode == "channels_last"
        if channels_last:
            return h if h.is_contiguous(memory_format=torch.channels_last) else h.contiguous(
                memory_format=torch.channels_last)
        return h.contiguous()

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor | float,
                context: torch.Tensor | PreparedContext | None = None, camera: torch.Tensor | None = None,
                num_frames: int = 1) -> torch.Tensor:
        t, context, camera = self._check_inputs(x, timesteps, context, camera, num_frames)
        dtype = self.time_embed[0].weight.dtype
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels).to(dtype))
        if camera is not None:
            emb = emb + self.camera_embed(camera.to(dtype))
        if isinstance(context, torch.Tensor):
            context = context.to(dtype)
        ckpt = self.config.use_checkpoint and self.training
        h = x.to(dtype)
        # The blocks' layers run from here rather than through TimestepEmbedSequential.forward so that each
        # layer's input is released as soon as the next layer has it (a caller's reference would keep it), and
        # each gets its input in the layout chosen for its shape (_to_layout: changes only between resolutions).
        skips = []
        for block in self.input_blocks:
            for layer in block:
                h = _run_layer(layer, self._to_layout(h), emb, context, num_frames, ckpt)
            skips.append(h)
        for layer in self.middle_block:
            h = _run_layer(layer, self._to_layout(h), emb, context, num_frames, ckpt)
        for block in self.output_blocks:
            h = torch.cat([h, skips.pop()], dim=1)
            for layer in block:
                h = _run_layer(layer, self._to_layout(h), emb, context, num_frames, ckpt)
        return self.out(self._to_layout(h)).to(x.dtype).contiguous()
