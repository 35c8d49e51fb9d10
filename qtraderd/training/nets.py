"""Two compact forecasting networks over candle windows: N-HiTS and PatchTST.

Both read a window from `qtraderd.features.windows` (float32 [n, WINDOW, CHANNELS]) and forecast the
cumulative log return of the close, relative to the entry price (bar t+1's open), at a few
points of the label horizon (e.g. bars 6, 12, ..., 48). A small classification head turns
that forecast into the same three probabilities (none, long, short) the tree models give,
so the daemon can treat every family alike. Why each piece is there:

* **N-HiTS** (Challu et al. 2023): every stack looks at the input through its own MaxPool
  rate (coarse stacks see the trend, fine ones the detail), an MLP emits backcast and
  forecast coefficients, the forecast coefficients live at a coarse rate and are linearly
  interpolated up to the horizon points (hierarchical interpolation: coarse stacks cannot
  produce high-frequency noise), and stacks are doubly residual (each explains what the
  previous ones left in the input; forecasts add up).
* **PatchTST** (Nie et al. 2023): the 64 bars become 8 patches of 8 bars (tokens carry local
  shape, attention is over 8 tokens not 64), each of the 5 channels runs through the *same*
  Transformer encoder on its own (channel independence: 5x the sequences per weight), and
  reversible instance normalisation (RevIN) takes each series' level and scale out before
  the encoder and puts the close channel's back on the forecast. The flatten head reads all
  channels' encoded patches, so volume and ranges can inform the close forecast without
  any cross-channel attention in the backbone.
* **Shared head** (`ForecastClassifier`): the forecast, in units of the training targets'
  spread, plus its max/min/last and two window volatility summaries (RevIN removes scale,
  and whether any barrier is hit at all is mostly a volatility question) go through a
  tiny MLP to 3 logits. Loss = MSE(forecast) + cross-entropy(class), see nets_train.py.

Everything that depends on the training data (input scales, target scales, volatility
normalisation) is a buffer set from the training rows only and exported with the graph,
so ONNX serving needs nothing but the window. No dropout, no batch norm: training is
deterministic for a seed and eval == train behaviour apart from the optimiser.

Only the learner process imports this module (it imports torch at module level).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from qtraderd.features.windows import CHANNELS, WINDOW

N_CLASSES = 3
N_SUMMARY = 5  # max, min, last of the forecast + 2 volatility summaries
EPS = 1e-10


def forecast_points(horizon: int, n: int = 8) -> tuple[int, ...]:
    """Bars after t at which the cumulative return is forecast: n evenly spaced, ending at
    the label horizon (48 -> 6, 12, ..., 48), so the forecast spans exactly the label's
    time barrier and no further."""
    n = max(1, min(n, horizon))
    return tuple(sorted({max(1, round(horizon * (i + 1) / n)) for i in range(n)}))


def interpolation_matrix(n_coef: int, n_out: int) -> torch.Tensor:
    """[n_coef, n_out] linear interpolation from n_coef knots (evenly spread over the output
    points, first and last aligned) up to n_out points. A fixed matmul rather than
    F.interpolate: exact, trivially exportable, and the same numbers in torch and ONNX."""
    w = torch.zeros(n_coef, n_out, dtype=torch.float64)
    if n_coef == 1:
        w[0] = 1.0
        return w.float()
    for j in range(n_out):
        pos = j * (n_coef - 1) / max(n_out - 1, 1)
        lo = min(math.floor(pos), n_coef - 2)
        frac = pos - lo
        w[lo, j] += 1.0 - frac
        w[lo + 1, j] += frac
    return w.float()


@dataclass(frozen=True)
class NHiTSSpec:
    pool_kernels: tuple[int, ...] = (8, 4, 1)  # input rate per stack (coarse -> fine)
    freq_downsample: tuple[int, ...] = (4, 2, 1)  # forecast coefficient rate per stack
    blocks_per_stack: int = 1
    hidden: int = 128
    cls_hidden: int = 32


@dataclass(frozen=True)
class PatchTSTSpec:
    patch: int = 8
    stride: int = 8
    d_model: int = 16
    heads: int = 1  # 2 heads: ~35 % more time per epoch on 2 cores (the time budget rules)
    layers: int = 1
    ffn: int = 32
    cls_hidden: int = 32


def spec_for(family: str) -> NHiTSSpec | PatchTSTSpec:
    if family == "nhits":
        return NHiTSSpec()
    if family == "patchtst":
        return PatchTSTSpec()
    raise ValueError(f"unknown network family {family!r}")


# ---------------------------------------------------------------------------------- N-HiTS


class NHiTSBlock(nn.Module):
    """Pool the residual input at one rate, MLP, backcast (full rate) + forecast (coarse)."""

    def __init__(self, kernel: int, n_coef: int, n_points: int, hidden: int) -> None:
        super().__init__()
        self.pool = nn.MaxPool1d(kernel_size=kernel, stride=kernel, ceil_mode=True)
        n_in = CHANNELS * math.ceil(WINDOW / kernel)
        self.mlp = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU())
        self.backcast = nn.Linear(hidden, CHANNELS * WINDOW)
        self.forecast = nn.Linear(hidden, n_coef)
        self.register_buffer("interp", interpolation_matrix(n_coef, n_points))

    def forward(self, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """r: residual [n, CHANNELS, WINDOW] -> (backcast like r, forecast [n, points])."""
        h = self.mlp(self.pool(r).flatten(1))
        back = self.backcast(h).view(-1, CHANNELS, WINDOW)
        return back, self.forecast(h) @ self.interp


class NHiTS(nn.Module):
    """Backbone: window [n, WINDOW, CHANNELS] -> forecast in target-spread units [n, points]."""

    def __init__(self, n_points: int, spec: NHiTSSpec) -> None:
        super().__init__()
        # Fixed per-channel input scale (training std): the channels differ by ~100x
        # (log returns vs. demeaned log volume); without this the MLPs see mostly volume.
        self.register_buffer("in_scale", torch.ones(CHANNELS))
        blocks = []
        for kernel, down in zip(spec.pool_kernels, spec.freq_downsample, strict=True):
            n_coef = max(1, math.ceil(n_points / down))
            blocks += [NHiTSBlock(kernel, n_coef, n_points, spec.hidden)
                       for _ in range(spec.blocks_per_stack)]
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = (x / self.in_scale).transpose(1, 2)  # [n, CHANNELS, WINDOW]
        total = None
        for block in self.blocks:
            back, fc = block(r)
            r = r - back  # doubly residual: the next stack models what is left
            total = fc if total is None else total + fc
        assert total is not None
        return total


# -------------------------------------------------------------------------------- PatchTST


class EncoderLayer(nn.Module):
    """Pre-norm Transformer layer with hand-written attention (plain MatMul/Softmax in ONNX,
    no fused-attention op whose support varies across onnxruntime versions)."""

    def __init__(self, d: int, heads: int, ffn: int) -> None:
        super().__init__()
        if d % heads:
            raise ValueError(f"d_model {d} is not a multiple of heads {heads}")
        self.heads, self.dh = heads, d // heads
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ff = nn.Sequential(nn.Linear(d, ffn), nn.GELU(), nn.Linear(ffn, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, self.dh).permute(
            2, 0, 3, 1, 4).unbind(0)  # each [b, heads, t, dh]
        s = q @ k.transpose(-1, -2) * (1.0 / math.sqrt(self.dh))  # [b, heads, t, t]
        # softmax spelled out: aten's softmax over a last dim of 8 is ~2x slower on CPU
        e = torch.exp(s - s.amax(dim=-1, keepdim=True))
        y = ((e / e.sum(dim=-1, keepdim=True)) @ v).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(y)
        return x + self.ff(self.norm2(x))


class PatchTST(nn.Module):
    """Backbone: window [n, WINDOW, CHANNELS] -> forecast in target-spread units [n, points]."""

    def __init__(self, n_points: int, spec: PatchTSTSpec) -> None:
        super().__init__()
        self.patch, self.stride = spec.patch, spec.stride
        self.n_patches = (WINDOW - spec.patch) // spec.stride + 1
        self.register_buffer("target_scale", torch.ones(n_points))
        # RevIN's learnable affine, per channel.
        self.rev_w = nn.Parameter(torch.ones(CHANNELS))
        self.rev_b = nn.Parameter(torch.zeros(CHANNELS))
        self.embed = nn.Linear(spec.patch, spec.d_model)
        self.pos = nn.Parameter(torch.randn(self.n_patches, spec.d_model) * 0.02)
        self.layers = nn.ModuleList(EncoderLayer(spec.d_model, spec.heads, spec.ffn)
                                    for _ in range(spec.layers))
        self.norm = nn.LayerNorm(spec.d_model)
        self.head = nn.Linear(CHANNELS * self.n_patches * spec.d_model, n_points)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        s = x.transpose(1, 2)  # [n, CHANNELS, WINDOW]
        mean = s.mean(dim=-1, keepdim=True)
        std = torch.sqrt(((s - mean) ** 2).mean(dim=-1, keepdim=True) + EPS)
        s = (s - mean) / std * self.rev_w[:, None] + self.rev_b[:, None]
        if self.stride == self.patch and self.n_patches * self.patch == WINDOW:
            p = s.reshape(n, CHANNELS, self.n_patches, self.patch)  # a view, no copy
        else:  # overlapping patches: slices + stack (plain Slice/Concat in ONNX)
            p = torch.stack([s[..., i * self.stride: i * self.stride + self.patch]
                             for i in range(self.n_patches)], dim=2)  # [n, C, P, patch]
        z = self.embed(p.reshape(n * CHANNELS, self.n_patches, self.patch)) + self.pos
        for layer in self.layers:
            z = layer(z)
        z = self.norm(z).reshape(n, -1)  # channels stay independent up to here
        y = self.head(z)  # RevIN-normalised units of the close channel
        # De-normalise with the close channel's statistics (undo affine, then scale/level).
        y = (y - self.rev_b[0]) / (self.rev_w[0] + EPS) * std[:, 0] + mean[:, 0]
        return y / self.target_scale  # log return -> target-spread units


# ---------------------------------------------------------------------------------- head


def window_summaries(x: torch.Tensor) -> torch.Tensor:
    """[n, 2]: log realised volatility of close-to-close steps and log mean high-low range.
    Pure functions of the window (no look-ahead), computed inside the graph."""
    steps = x[:, 1:, 0] - x[:, :-1, 0]
    vol = torch.log(torch.sqrt((steps * steps).mean(dim=1) + EPS))
    rng = torch.log((x[:, :, 1] - x[:, :, 2]).mean(dim=1) + 1e-6)
    return torch.stack([vol, rng], dim=1)


class ForecastClassifier(nn.Module):
    """Backbone forecast -> (class probabilities [n, 3], forecast in log returns [n, points]).

    `forward` is the exported graph; `train_outputs` gives what the losses need (logits and
    the forecast in target-spread units, the scale MSE is computed in).
    """

    def __init__(self, backbone: nn.Module, n_points: int, cls_hidden: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.register_buffer("target_scale", torch.ones(n_points))
        self.register_buffer("summary_mean", torch.zeros(2))
        self.register_buffer("summary_std", torch.ones(2))
        self.cls = nn.Sequential(nn.Linear(n_points + N_SUMMARY, cls_hidden), nn.GELU(),
                                 nn.Linear(cls_hidden, N_CLASSES))

    def train_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.backbone(x)  # [n, points], target-spread units
        ctx = (window_summaries(x) - self.summary_mean) / self.summary_std
        feats = torch.cat([f, f.amax(dim=1, keepdim=True), f.amin(dim=1, keepdim=True),
                           f[:, -1:], ctx], dim=1)
        return self.cls(feats), f

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, f = self.train_outputs(x)
        return torch.softmax(logits, dim=1), f * self.target_scale


def build(family: str, n_points: int) -> ForecastClassifier:
    """A freshly initialised network (seed torch first for reproducible weights)."""
    spec = spec_for(family)
    backbone: nn.Module
    if isinstance(spec, NHiTSSpec):
        backbone = NHiTS(n_points, spec)
    else:
        backbone = PatchTST(n_points, spec)
    return ForecastClassifier(backbone, n_points, spec.cls_hidden)


def set_scales(model: ForecastClassifier, *, in_scale: torch.Tensor,
               target_scale: torch.Tensor, summary_mean: torch.Tensor,
               summary_std: torch.Tensor) -> None:
    """Fill the data-dependent buffers (from training rows only) before training."""
    with torch.no_grad():
        model.target_scale.copy_(target_scale)
        model.summary_mean.copy_(summary_mean)
        model.summary_std.copy_(summary_std)
        bb = model.backbone
        if isinstance(bb, NHiTS):
            bb.in_scale.copy_(in_scale)
        elif isinstance(bb, PatchTST):
            bb.target_scale.copy_(target_scale)


def describe(family: str) -> dict[str, Any]:
    """Architecture hyper-parameters for the artifact metadata."""
    return {"architecture": family, **asdict(spec_for(family))}
