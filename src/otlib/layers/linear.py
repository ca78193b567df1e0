"""`OpticalLinear`: a drop-in `nn.Linear` whose product runs through the simulated optics.

    Y = Q_stoch(Q_det(X) · LUT(Q_det(W))ᵀ; out range) + b        (bias digital)

The layer keeps the state and makes one call into `otlib.ops.optical_linear`: it advances the
call counter (so every call draws fresh dither), updates the x/w ranges from the batch
(training only), and after the op folds the pre-quantization accumulator's min/max into the
out range. The parameters are `weight` and `bias` exactly as in `nn.Linear`, so state dicts of
the digital model load unchanged. Siblings that read the same x (`SharedInput`: q/k/v, gate/up)
observe and encode it once between them.

LoRA (`lora_rank > 0`): W_eff = W + (alpha / rank)·B·A, A [rank, in] (Kaiming), B [out, rank]
(zeros, so the layer starts equal to the base layer). W_eff — not W — is what the SLM holds:
the SLM holds one weight matrix, and a separate digital adapter product would not be an optical
computation, so the adapter's contribution is quantized and multiplied optically with the base
weight. Gradients reach A and B straight through the quantizers. `lora_dropout` drops entries of
A (the usual LoRA input dropout would need a second, digital product).
"""

from __future__ import annotations

import math
import weakref

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import skip_init

from otlib import ops
from otlib.config import NUMERICS, LayerConfig
from otlib.layers.ranges import RangeTracker
from otlib.ops._dispatch import use_kernels

X, W, OUT = 0, 1, 2  # rows of the ranges tensor (ops contract)


class SharedInput:
    """Sibling `OpticalLinear`s that read one input tensor — a block's q/k/v projections, its MLP's gate and up
    projections: in the hardware, one input modulator fanned out to several weight banks (`otlib.transform` links
    them). Per input, the first sibling called (the leader) folds x into its x range and encodes it, as a single
    layer does; each other sibling copies the leader's x range and reuses the codes instead of observing and
    encoding x again. The same values as separate observations (the siblings see the same inputs, so their x
    ranges are equal anyway), one fold and one encoder pass of x fewer per sibling (benchmarks/NOTES.md 48).

    An input is the same tensor object, unmodified since the leader saw it (its version counter): different
    inputs never share. A sibling that has used the current input and is called with it again leads a new
    round. Training only, eager only (not under torch.compile, whose graphs hold no Python state, nor in
    inference mode, whose tensors have no version counter). Under autocast the leader's encode also writes x in the
    autocast dtype, which every sibling multiplies and saves for its backward instead of casting x itself
    (benchmarks/NOTES.md 75).
    """

    def __init__(self, size: int) -> None:
        self.size = size
        # the current input: (weak reference to x, x's version, the leader's bounds, x's codes or None, x as the op
        # multiplies it, ids of the siblings that used it); dropped once all `size` siblings have
        self._entry: tuple | None = None

    def lookup(self, layer: OpticalLinear, x: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor] | None, Tensor] | None:
        """(leader's bounds, x codes, x as the op multiplies it) if `x` is the current input and `layer` has not
        used it yet, else None (then `layer` leads: it observes x and `record`s it)."""
        entry = self._entry
        if entry is None:
            return None
        ref, version, bounds, codes, x_op, used = entry
        if ref() is not x or x._version != version or id(layer) in used:
            return None
        used.add(id(layer))
        if len(used) == self.size:
            self._entry = None
        return bounds, codes, x_op

    def record(self, layer: OpticalLinear, x: Tensor, codes: tuple[Tensor, Tensor] | None, x_op: Tensor) -> None:
        self._entry = (weakref.ref(x), x._version, layer.stats.bounds, codes, x_op, {id(layer)})

    def __getstate__(self) -> dict:  # pickling and deepcopy: no cached input
        return {**self.__dict__, "_entry": None}


class WeightBank:
    """The OpticalLinears of one model (`otlib.transform` links them and calls `pre_forward` from a forward
    pre-hook of the model). At the start of a training forward, each weight that the model's previous forward
    called once is folded into its w range and encoded, all in two launches (otlib.ops.weight_codes) instead of
    two launches in each layer's call (benchmarks/NOTES.md 70); the call then folds and encodes its x alone. Under
    autocast the encode also writes each fp32 weight in the autocast dtype for the backward's products, in place of
    a cast per layer (NOTES.md 75). The
    same values, provided each of those layers is called once again: a weight's w range takes one EMA step per
    call, and a layer left out of a forward after the previous one called it has still taken that step (its next
    forward leaves it out of the bank). A layer called without `pre_forward` (the inner model called directly,
    recomputation under activation checkpointing), or with another or a modified weight, runs its own fold and
    encode as before.

    Training only, eager only (as SharedInput); CUDA weights with the device fold (min/max, one process), no
    adapter (LoRA's effective weight is formed per call)."""

    def __init__(self, layers: list[OpticalLinear]) -> None:
        self.layers = list(layers)
        self._calls: dict[int, int] = {}  # id(layer) → calls since the last pre_forward
        # id(layer) → (weight, its version, codes, sums, cast weight or None) for the current forward
        self._issued: dict[int, tuple] = {}
        self._tables_key: tuple | None = None
        self._tables: list[tuple[ops.WeightCodes, list[OpticalLinear]]] = []

    def pre_forward(self, model: nn.Module, args: tuple) -> None:
        calls, self._calls, self._issued = self._calls, {}, {}
        if not model.training or torch.compiler.is_compiling() or torch.is_inference_mode_enabled():
            return
        members = [layer for layer in self.layers if calls.get(id(layer)) == 1 and layer.banks_weight()]
        key = tuple((id(m), id(m.weight), m.weight.data_ptr(), id(m.stats.bounds)) for m in members)
        if key != self._tables_key:
            self._tables_key, self._tables = key, self._make_tables(members)
        for codes, layers in self._tables:
            codes.refresh(ops.autocast_dtype(layers[0].weight))  # the weights' own dtype: no copies
            for i, layer in enumerate(layers):
                layer.stats.mark_set(W)
                self._issued[id(layer)] = (layer.weight, layer.weight._version, *codes.codes(i), codes.cast(i))

    @staticmethod
    def _make_tables(members: list[OpticalLinear]) -> list[tuple[ops.WeightCodes, list[OpticalLinear]]]:
        groups: dict[tuple, list[OpticalLinear]] = {}
        for layer in members:
            cfg = layer.layer_config
            setting = (layer.weight.dtype, layer.weight.device, cfg.q_levels, cfg.q_lut_min, cfg.q_smooth_factor)
            groups.setdefault(setting, []).append(layer)
        tables = []
        for (*_, levels, lut_min, beta), layers in groups.items():
            ranges = [
                ops.WeightRange(m.weight, m.stats.bounds, m.stats.scratch, m.stats.tickets, m.stats.initialised, W)
                for m in layers
            ]
            tables.append((ops.WeightCodes(ranges, levels=levels, lut_min=lut_min, beta=beta), layers))
        return tables

    def take(self, layer: OpticalLinear, weight: Tensor) -> tuple[tuple[Tensor, Tensor], Tensor | None] | None:
        """`layer`'s weight ((codes, sums), the weight in the autocast dtype or None) of this forward, its w range
        folded, if `pre_forward` made them for this very weight, unmodified since; else None (the layer folds and
        encodes it itself). Counts the call."""
        key = id(layer)
        self._calls[key] = self._calls.get(key, 0) + 1
        issued = self._issued.pop(key, None)
        if issued is None or issued[0] is not weight or weight._version != issued[1]:
            return None
        return (issued[2], issued[3]), issued[4]

    def __getstate__(self) -> dict:  # pickling and deepcopy: the layers, no device tables or codes
        return {**self.__dict__, "_calls": {}, "_issued": {}, "_tables_key": None, "_tables": []}


class OpticalLinear(nn.Linear):
    """nn.Linear computed optically. Input [..., in_features] → output [..., out_features], any float dtype.

    Keyword arguments: the `[fc]` keys of the TOML file (`q_levels`, `q_lut_min`, `q_smooth_factor`,
    `q_init_seed`, `q_bypass`, `q_quantiles`), `numerics` ("fixed" | "mase"), `stream` (the Philox
    stream id, distinct per optical op of a model), and `lora_rank` (0 = no adapter), `lora_alpha`,
    `lora_dropout`.

    Buffers: `stats.bounds` fp32 [3, 2] (x, w, out ranges), `stats.initialised` bool [3],
    `rng` int64 [3] = (seed, call counter, stream).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        q_levels: int = 256,
        q_lut_min: float = 0.020040,
        q_smooth_factor: float = 0.9,
        q_init_seed: int = 0,
        q_bypass: bool = False,
        q_quantiles: tuple[float, float] | None = None,
        numerics: str = "fixed",
        stream: int = 0,
        lora_rank: int = 0,
        lora_alpha: float = 32.0,
        lora_dropout: float = 0.0,
    ) -> None:
        super().__init__(in_features, out_features, bias, device, dtype)
        self.layer_config = LayerConfig(q_levels, q_lut_min, q_smooth_factor, q_init_seed, q_bypass, q_quantiles)
        if numerics not in NUMERICS:
            raise ValueError(f"OpticalLinear: numerics = {numerics!r} must be one of {NUMERICS}")
        if not 0 <= stream < 2**31:
            raise ValueError(f"OpticalLinear: stream = {stream!r} must be in [0, 2**31)")
        if lora_rank < 0 or lora_alpha <= 0 or not 0 <= lora_dropout < 1:
            raise ValueError(
                f"OpticalLinear: lora_rank = {lora_rank!r} (>= 0), lora_alpha = {lora_alpha!r} (> 0), "
                f"lora_dropout = {lora_dropout!r} (in [0, 1)) out of range"
            )
        self.numerics = numerics
        self.stream = stream
        self.stats = RangeTracker(("x", "w", "out"), q_smooth_factor, q_quantiles, device=device)
        self.register_buffer("rng", torch.zeros(3, dtype=torch.int64, device=device))
        self.shared_input: SharedInput | None = None  # set by otlib.transform for siblings reading one tensor
        self.weight_bank: WeightBank | None = None  # set by otlib.transform: the model's weights encoded at once
        self.lora_rank = lora_rank
        self.lora_scale = lora_alpha / lora_rank if lora_rank else 0.0
        self.lora_dropout = lora_dropout
        if lora_rank:
            self.lora_A = nn.Parameter(torch.empty(lora_rank, in_features, device=device, dtype=dtype))
            self.lora_B = nn.Parameter(torch.empty(out_features, lora_rank, device=device, dtype=dtype))
        else:
            self.register_parameter("lora_A", None)
            self.register_parameter("lora_B", None)
        self.reset_optical_state()

    @torch.no_grad()
    def reset_optical_state(self) -> None:
        """Ranges unset, call counter 0, adapters at their initialisation (B = 0: W_eff = W)."""
        self.stats.reset()
        self.rng[0].fill_(self.layer_config.q_init_seed)
        self.rng[1].fill_(0)
        self.rng[2].fill_(self.stream)
        if self.lora_A is not None:
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear and peft initialise A
            nn.init.zeros_(self.lora_B)

    @classmethod
    def from_linear(cls, linear: nn.Linear, **layer_cfg: object) -> OpticalLinear:
        """An OpticalLinear sharing `linear`'s weight and bias Parameters (no copy, same device/dtype)."""
        layer = skip_init(  # no throw-away initialisation of a weight that is replaced next
            cls,
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
            **layer_cfg,
        )
        layer.weight = linear.weight
        layer.bias = linear.bias
        layer.reset_optical_state()  # skip_init leaves buffers uninitialised
        return layer

    def effective_weight(self) -> Tensor:
        """W, or W + (alpha / rank)·B·dropout(A) with an adapter: the matrix the SLM holds."""
        if self.lora_A is None:
            return self.weight
        lora_a = F.dropout(self.lora_A, self.lora_dropout, self.training) if self.lora_dropout else self.lora_A
        return self.weight + (self.lora_B @ lora_a) * self.lora_scale

    def banks_weight(self) -> bool:
        """Whether WeightBank may fold and encode this layer's weight (host state only)."""
        weight = self.weight
        return (
            self.lora_A is None
            and not self.layer_config.q_bypass
            and use_kernels(weight, self.layer_config.q_levels)
            and self.stats.folds_on_device(weight)
            and weight.is_contiguous()
        )

    def forward(self, x: Tensor) -> Tensor:
        cfg = self.layer_config
        weight = self.effective_weight()
        if cfg.q_bypass:
            return F.linear(x, weight, self.bias)
        eager_training = self.training and not torch.compiler.is_compiling() and not torch.is_inference_mode_enabled()
        share = self.shared_input if eager_training else None
        bank = self.weight_bank if eager_training else None
        banked = bank.take(self, weight) if bank is not None else None
        w_codes, w_cast = (None, None) if banked is None else banked
        operands = {W: weight} if w_codes is None else {}  # the bank has folded the weight already
        shared = share.lookup(self, x) if share is not None else None
        x_codes = x_cast = None
        # the call counter advances on the device (a fresh dither stream per call, no sync), in the ranges' fold
        if shared is None:
            ranges = self.stats.observe({X: x, **operands}, self.training, counter=self.rng[1:2])
            if share is not None:
                x_codes, x_cast = ops.encode_input(x, ranges, cfg.q_levels)
                share.record(self, x, x_codes, x_cast)
        else:  # a sibling has observed and encoded this x
            leader_bounds, x_codes, x_cast = shared
            ranges = self.stats.observe(operands, True, counter=self.rng[1:2], copy_from=(X, leader_bounds))
        y, out_min, out_max = ops.optical_linear(
            x,
            weight,
            self.bias,
            ranges,
            self.rng,
            levels=cfg.q_levels,
            lut_min=cfg.q_lut_min,
            numerics=self.numerics,
            calibrate_out=not self.stats.is_set(OUT),  # first batch / untrained eval: accumulator's own range
            x_codes=x_codes,
            w_codes=w_codes,
            x_cast=x_cast,
            w_cast=w_cast,
        )
        if self.training:
            self.stats.update_pair(OUT, out_min, out_max)
        return y

    def extra_repr(self) -> str:
        cfg = self.layer_config
        text = (
            f"{super().extra_repr()}, q_levels={cfg.q_levels}, q_lut_min={cfg.q_lut_min}, "
            f"q_smooth_factor={cfg.q_smooth_factor}, q_quantiles={cfg.q_quantiles}, q_bypass={cfg.q_bypass}, "
            f"numerics={self.numerics}, seed={cfg.q_init_seed}, stream={self.stream}"
        )
        if self.lora_rank:
            text += f", lora_rank={self.lora_rank}, lora_scale={self.lora_scale}, lora_dropout={self.lora_dropout}"
        return text
