"""The benchmark scripts import cleanly, parse their arguments and refuse to run without a CUDA GPU
(CI has none: their GPU runs are recorded in docs/performance.md)."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = {
    "ab_training_step": ["--variants", "default,full-pv"],
    "bench_optical_linear": ["--tokens", "64"],
    "bench_attention": ["--block", "32"],
    "bench_attention_grads": ["--block", "32"],
    "bench_dither_cost": ["--variants", "none,hash"],
    "bench_gemm_configs": ["--configs", "64x64x64:w8:s2"],
    "bench_statistics": ["--heads", "2", "--warps", "1"],
    "bench_training_step": ["--models", "60m", "--layers", "1", "--steps", "1"],
    "profile_optical_linear": ["--tokens", "64"],
    "profile_training_step": ["--model", "60m", "--modes", "optical"],
    "bench_trainer": ["--steps", "4"],
    "run_all": ["--out", "unused.md"],
}


def _load(name: str):
    sys.path.insert(0, str(BENCHMARKS))  # the scripts import their sibling report.py, as when run directly
    try:
        spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU refusal")
@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_script_refuses_without_gpu(name):
    module = _load(name)
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        module.main(SCRIPTS[name])


def test_training_step_rejects_one_warmup_step():
    module = _load("bench_training_step")
    with pytest.raises(SystemExit):  # argparse error: the ranges calibrate on step 1
        module.main(["--warmup", "1"])


def test_report_is_written_atomically(tmp_path):
    report = _load("report")
    target = tmp_path / "sub" / "table.md"
    report.write_atomic(str(target), "| a |\n")
    assert target.read_text() == "| a |\n"
    assert [p.name for p in target.parent.iterdir()] == ["table.md"]  # no temporary left behind


def test_gemm_configs_parse_candidate_tiles():
    pytest.importorskip("triton", reason="Triton is not installed")
    module = _load("bench_gemm_configs")
    a, b, capped = module.parse_configs("64x64x64:w8:s2, 32x128x64:w4:s3, 64x64x64:w8:s2:m128")
    assert (a.kwargs["BLOCK_M"], a.kwargs["BLOCK_N"], a.kwargs["BLOCK_K"], a.num_warps, a.num_stages) == (
        64,
        64,
        64,
        8,
        2,
    )
    assert (b.kwargs["BLOCK_M"], b.kwargs["BLOCK_N"], b.num_warps, b.num_stages) == (32, 128, 4, 3)
    assert a.maxnreg is None and capped.maxnreg == 128
    for bad in ("64x64:w8:s2", "64x64x64:8:s2", "64x64x64:w8", "64x64x64:w8:s2:x", "64x64x64:w8:s2:m1:m2"):
        with pytest.raises(SystemExit):  # argparse names the bad item
            module.main(["--configs", bad])


def test_dither_cost_rejects_an_unknown_variant():
    module = _load("bench_dither_cost")
    with pytest.raises(SystemExit):  # argparse names it, before looking for a GPU
        module.main(["--variants", "philox10,xorshift"])
    with pytest.raises(ValueError, match="xorshift"), module.dither("xorshift"):
        pass


@pytest.mark.skipif(torch.cuda.is_available(), reason="compiled kernels keep the dither they compiled with")
def test_dither_cost_variants_change_only_the_readouts_uniforms():
    """bench_dither_cost's variants: philox10 is the library's read-out, none rounds to nearest whatever the seed,
    philox7 and hash draw other uniforms and still round stochastically (up with probability = the position's
    fraction), and the library's read-out is back after each block. Interpreted only: the interpreter looks the
    dither up at every call (the benchmark runs each GPU variant in a process of its own)."""
    from otlib.kernels.optical_matmul import new_minmax, optical_gemm
    from otlib.kernels.quantize import operand_codes

    module = _load("bench_dither_cost")
    device = "cpu"
    g = torch.Generator(device=device).manual_seed(0)
    m, k, n = 128, 64, 128
    x = torch.randn(m, k, device=device, generator=g).to(torch.bfloat16)
    w = (torch.randn(n, k, device=device, generator=g) / k**0.5).to(torch.bfloat16)
    ranges = torch.tensor([[-4.0, 4.0], [-0.2, 0.2], [-2.0, 2.0]], device=device)
    mm = new_minmax(x.device)
    xc, xs = operand_codes(x.unsqueeze(0), ranges, 0, 255, minmax=mm)
    wc, ws = operand_codes(w.unsqueeze(0), ranges, 1, 255, lut_min=0.02)
    a, b = (xc.view(1, 1, m, k), xs.view(1, 1, m)), (wc.view(1, 1, n, k), ws.view(1, 1, n))

    def product(seed: int, readout: bool = True) -> torch.Tensor:
        rng = torch.tensor([seed, 5, 1], device=device)
        return optical_gemm(a, b, 1, None, ranges, rng, 255, mm, readout=readout, out_dtype=torch.float32).view(m, n)

    def product_with(variant: str, seed: int) -> torch.Tensor:
        with module.dither(variant):
            return product(seed)

    library = product(1)
    assert torch.equal(product_with("philox10", 1), library)
    assert torch.equal(product_with("none", 1), product_with("none", 2))
    assert torch.equal(product(1), library)  # restored
    lo, hi = ranges[2].tolist()
    t = (product(1, readout=False).clamp(lo, hi) - lo) * (255 / (hi - lo + 1e-8))
    fraction = t - t.floor()
    between = (fraction > 0.1) & (fraction < 0.4)  # far from ½ and from the levels: rounding up is the dither's doing
    assert between.sum() > 2000
    for variant in ("philox7", "hash", "none"):
        y = product_with(variant, 1)
        assert not torch.equal(y, library)
        up = (torch.round((y - lo) * (255 / (hi - lo))) > t.floor())[between].float().mean().item()
        expected = 0.0 if variant == "none" else fraction[between].mean().item()  # ≈ 0.25; σ of the share ≈ 0.01
        assert abs(up - expected) < 0.04, (variant, up, expected)
        if variant != "none":
            assert not torch.equal(y, product_with(variant, 2))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_graphed_step_keeps_its_model_alive():
    """The replayed graph writes into the model's memory: the returned step must hold the model (and its
    optimizer and batch) until it is dropped, and two graphed models must run side by side in one process."""
    import gc
    import weakref

    module = _load("bench_training_step")
    steps, models = [], []
    for _ in range(2):
        model = module.build_model("60m", "optical", torch.device("cuda"), layers=1)
        steps.append(module.make_step(model, 2, 64, "graphed", 2))
        models.append(weakref.ref(model))
        del model
    gc.collect()
    assert all(ref() is not None for ref in models)
    before = [p.detach().clone() for p in models[0]().parameters()]
    for replay in steps * 2:  # alternating replays of both graphs
        replay()
    del replay
    torch.cuda.synchronize()
    after = list(models[0]().parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))  # AdamW moved the weights
    steps.clear()
    gc.collect()
    assert all(ref() is None for ref in models)


def test_attention_stand_in_takes_the_causal_path_of_a_llama_attention(monkeypatch):
    """bench_attention's stand-in module must reach otlib's products with the flags a LlamaAttention's call
    gives them (causal Q·Kᵀ), or the benchmark times another path than the model runs."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaAttention

    import otlib
    from otlib.layers import attention

    module = _load("bench_attention")
    calls = []
    product = attention.ops.optical_matmul

    def spy(*args, **kwargs):
        calls.append(kwargs.get("causal", False))
        return product(*args, **kwargs)

    monkeypatch.setattr(attention.ops, "optical_matmul", spy)
    config = LlamaConfig(hidden_size=32, num_attention_heads=2, num_key_value_heads=1, head_dim=16)
    llama = LlamaAttention(config, layer_idx=0)
    stand_in = module.make_module(2, 1, torch.device("cpu"))
    mask = module.causal_mask(1, 8, torch.device("cpu"))
    llama.add_module(otlib.layers.STATE_ATTR, stand_in.get_submodule(otlib.layers.STATE_ATTR))
    for mod in (llama, stand_in):
        q, k, v = (torch.randn(1, h, 8, 16) for h in (2, 1, 1))
        attention.optical_attention_forward(mod, q, k, v, mask, 0.25)
    assert calls == [True, False, True, False]  # Q·Kᵀ causal, P·V not: the same for both modules


def test_ab_variants_switch_one_optimisation_off_and_back():
    """unlinked-inputs leaves no layer sharing its input, per-layer-weights none in the weight bank; full-pv (the causal P·V skip), masked-tiles (the GEMM's
    unmasked full tiles), masked-softmax (the softmax's full rows), masked-codes (the encoder's whole blocks),
    heads-first (attention's output in the projection's layout), stored-zeros (Q·Kᵀ's unread zero tiles),
    stored-dp (P·V's unread dP tiles), stored-ds (the softmax backward's unread dS), plain-order-pv/-dq (the
    longest row blocks first) and reduced-norms (the softmax's saved row max and sum) each turn a kernel path off
    while their model is built and captured, and back on after."""
    pytest.importorskip("triton", reason="Triton is not installed")
    from otlib import OpticalLinear
    from otlib.kernels import grad_matmul, optical_matmul, quantize, softmax
    from otlib.ops import softmax as softmax_op

    module = _load("ab_training_step")
    model = _load("bench_training_step").build_model("60m", "optical", torch.device("cpu"), layers=1)
    linears = [m for m in model.modules() if isinstance(m, OpticalLinear)]
    assert any(m.shared_input is not None for m in linears)
    rows, p = torch.zeros(1, 4, dtype=torch.bool), torch.zeros(1, 2, 4, 4)
    assert optical_matmul._rows_for_raw_a(rows, p, True) is rows
    with module.variant_setting("full-pv", model):
        assert optical_matmul._rows_for_raw_a(rows, p, True) is None
        assert any(m.shared_input is not None for m in linears)
    assert optical_matmul._rows_for_raw_a(rows, p, True) is rows
    assert optical_matmul._even_mn(64, 64, 64, 64)
    with module.variant_setting("masked-tiles", model):
        assert not optical_matmul._even_mn(64, 64, 64, 64)
    assert optical_matmul._even_mn(64, 64, 64, 64)
    with module.variant_setting("masked-softmax", model):
        assert not softmax._full_row(64, 64)
    assert softmax._full_row(64, 64)
    with module.variant_setting("masked-codes", model):
        assert not quantize._even_blocks(64, 128, 8, 128)
    assert quantize._even_blocks(64, 128, 8, 128)
    from otlib.layers import attention

    switches = {  # variant → the switch it turns off (a function of no arguments, True by default)
        "heads-first": (attention, "_heads_last"),
        "stored-zeros": (attention, "_skip_unread_scores"),
        "stored-dp": (attention, "_skip_unread_grads"),
        "stored-ds": (attention, "_skip_unread_ds"),
        "plain-order-pv": (optical_matmul, "_longest_first"),
        "plain-order-dq": (grad_matmul, "_longest_first"),
        "reduced-norms": (softmax_op, "_saved_norms"),
    }
    for variant, (owner, name) in switches.items():
        with module.variant_setting(variant, model):
            assert not getattr(owner, name)(), variant
        assert getattr(owner, name)(), variant
    with module.variant_setting("unlinked-inputs", model):
        assert all(m.shared_input is None for m in linears)
    assert all(m.weight_bank is not None for m in linears)
    with module.variant_setting("per-layer-weights", model):
        assert all(m.weight_bank is None for m in linears)
