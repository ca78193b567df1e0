"""Compile otlib's Triton kernels for Hopper (sm_90a) on a machine without a GPU: Triton's front end, its
passes and ptxas, which the interpreter (the CPU tests) never runs. A kernel that only the compiler rejects
(a constexpr lost in a starred tuple, a layout it cannot lower) fails here instead of on a GPU lease.

    python tests/otlib/compile_sm90.py        # one line per kernel variant: registers and spill bytes

Run without TRITON_INTERPRET (the kernels must be jitted, not interpreted); tests/otlib/test_compile_sm90.py runs
it in a subprocess. Each variant is one the library launches, at the first config of its autotune list (the
attention GEMMs at the 64 × 64 tiles the autotuner picks for them on an H200, P·V's capped at 128 registers).
The register counts are those of this machine's Triton and ptxas; the GPU machine's may differ.

Integer arguments are typed as a launch at the study's shapes specialises them: pointers and the sizes and
strides in DIVISIBLE are multiples of 16 (Triton's `tt.divisibility`, which lets it vectorise loads and stores),
and the unit strides of the launched layouts are the constant 1 (given in a variant's meta). Without them (until
the thirteenth session) the counts overstated registers and spills: 217 registers for the linear GEMM tile that
launches with 119, 255 and 840 bytes of spill for the dQ kernel that launches with 184 and none
(benchmarks/NOTES.md 59).
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.autotuner import Autotuner, Heuristics

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
from otlib.kernels import grad_matmul, optical_matmul, quantize, ranges, softmax

TARGET = GPUTarget("cuda", 90, 32)
FLOATS = {"n_f", "beta", "alpha", "scaling"}
INT64 = {"eps_bits", "lam_bits"}
# sizes and strides that are multiples of 16 at the study's shapes (T = 1024, hidden 384–1152, head_dim 64); head
# counts, groups and flags are not
DIVISIBLE = {
    "M", "N", "K", "M_BUCKET", "S", "T", "R", "C", "numel_x", "numel_y", "s_rows", "rs_b", "stride_rb",
    "stride_ab", "stride_ah", "stride_sb", "stride_sh", "stride_bb", "stride_bh", "stride_qb", "stride_qh",
    "stride_b", "stride_h", "stride_r", "sm_b", "sm_h", "sm_t",
    "sx_b", "sx_h", "sx_m", "sx_k", "sy_b", "sy_h", "sy_k", "sy_n", "sc_b", "sc_h", "sc_m", "sc_n",
}  # fmt: skip


def _jitted(kernel):
    while isinstance(kernel, Autotuner | Heuristics):
        kernel = kernel.fn
    return kernel


def _first_config(kernel) -> tuple[dict, dict]:
    """(meta-parameters, compile options) of the first config of an autotuned kernel's list."""
    config = kernel.configs[0]
    return dict(config.kwargs), {"num_warps": config.num_warps, "num_stages": config.num_stages}


def _gemm(
    name: str,
    readout: bool,
    bias: bool,
    a_raw: bool,
    causal: bool,
    meta=None,
    options=None,
    a_causal=False,
    even=True,
    heads_last=False,
    skip_above=False,
    persistent=None,
):
    first_meta, first_options = _first_config(optical_matmul._optical_gemm_kernel)
    meta = {**(meta or first_meta)}
    meta.update(READOUT=readout, HAS_BIAS=bias, A_RAW=a_raw, CAUSAL=causal, EVEN_K=True, PHILOX_TILE=True)
    meta.update(A_CAUSAL=a_causal, EVEN_MN=even, HEADS_LAST=heads_last, SKIP_ABOVE=skip_above, LONGEST_FIRST=a_causal)
    meta.update(TMA_OK=persistent is not None, TMA=persistent is not None, PERSISTENT=persistent or 0)
    descriptors = {}
    if persistent is None:
        meta.update(a_desc=None, b_desc=None)
    else:  # TMA descriptors of the codes, blocks of the config's tiles
        descriptors = {
            "a_desc": f"tensordesc<fp16[{meta['BLOCK_M']}, {meta['BLOCK_K']}]>",
            "b_desc": f"tensordesc<fp16[{meta['BLOCK_N']}, {meta['BLOCK_K']}]>",
        }
    pointers = {
        "a_ptr": "*bf16" if a_raw else "*fp16",
        "asum_ptr": "*fp32",
        "b_ptr": "*fp16",
        "bsum_ptr": "*fp32",
        "c_ptr": "*bf16" if readout else "*fp32",
        "bias_ptr": "*bf16",
        "ranges_ptr": "*fp32",
        "rng_ptr": "*i64",
        "min_ptr": "*fp32",
        "max_ptr": "*fp32",
        "rows_ptr": "*i1",
        **descriptors,
    }
    return name, optical_matmul._optical_gemm_kernel, pointers, meta, options or first_options


GRAD_META, GRAD_OPTIONS = _first_config(grad_matmul._grouped_bmm_kernel)
ATTENTION_TILE = ({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 8}, {"num_warps": 4, "num_stages": 2})
# the TMA config of the autotune list (kernels/optical_matmul.py)
TMA_TILE = ({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, {"num_warps": 8, "num_stages": 4})
PV_TILE = (ATTENTION_TILE[0], {"num_warps": 4, "num_stages": 3, "maxnreg": 128})
VARIANTS = [
    _gemm("GEMM linear read-out + bias", readout=True, bias=True, a_raw=False, causal=False),
    _gemm("GEMM linear read-out + bias, partial tiles", readout=True, bias=True, a_raw=False, causal=False, even=False),
    _gemm("GEMM accumulator only", readout=False, bias=False, a_raw=False, causal=False),
    _gemm("GEMM linear read-out, TMA, persistent", True, False, False, False, *TMA_TILE, persistent=1),
    _gemm("GEMM causal Q·Kᵀ", True, False, False, True, *ATTENTION_TILE),
    _gemm("GEMM causal Q·Kᵀ, unread zero tiles unstored", True, False, False, True, *ATTENTION_TILE, skip_above=True),
    _gemm("GEMM P·V encoding P, 128 registers", True, False, True, False, *PV_TILE),
    _gemm("GEMM causal P·V encoding P, 128 registers", True, False, True, False, *PV_TILE, a_causal=True),
    _gemm(
        "GEMM causal P·V encoding P, 128 registers, heads last",
        True,
        False,
        True,
        False,
        *PV_TILE,
        a_causal=True,
        heads_last=True,
    ),
    *(
        (
            f"grad GEMM {name}",
            grad_matmul._grouped_bmm_kernel,
            {"x_ptr": "*bf16", "y_ptr": "*bf16", "c_ptr": "*bf16", "rows_ptr": "*i1"},
            {**GRAD_META, "CAUSAL": causal, "ONE_STEP": False, "SKIP_UNREAD": False, "X_READ": x_read}
            | {"LONGEST_FIRST": causal == grad_matmul.X_LOWER, **unit_strides},
            GRAD_OPTIONS,
        )
        for name, causal, x_read, unit_strides in (
            # dQ = dS·K: dS contiguous, K and dQ head-transposed views with unit inner strides
            ("dQ, causal", grad_matmul.X_LOWER, False, {"sx_k": 1, "sy_n": 1, "sc_n": 1}),
            ("dQ, causal, dS read where written", grad_matmul.X_LOWER, True, {"sx_k": 1, "sy_n": 1, "sc_n": 1}),
            # dK = Σ_g dSᵀ·Q into dKᵀ: X = dSᵀ (unit stride along M), Q a head-transposed view
            ("dK, causal, dS read where written", grad_matmul.X_UPPER_T, True, {"sx_m": 1, "sy_n": 1, "sc_m": 1}),
        )
    ),
    *(
        (
            f"grad GEMM dP, one step{suffix}",
            grad_matmul._grouped_bmm_kernel,
            {"x_ptr": "*bf16", "y_ptr": "*bf16", "c_ptr": "*bf16", "rows_ptr": "*i1"},
            # dP = dO·Vᵀ: dO and V head-transposed views, dP contiguous
            {**GRAD_META, "CAUSAL": 0, "ONE_STEP": True, "SKIP_UNREAD": skip, "X_READ": False}
            | {"LONGEST_FIRST": False}
            | {"sx_k": 1, "sy_k": 1, "sc_n": 1},
            GRAD_OPTIONS,
        )
        for suffix, skip in (("", False), (", unread tiles skipped", True))
    ),
    *(
        (
            f"operand encoder, {'LUT' if lut else 'fp32 input cast to bf16'}{suffix}",
            quantize._operand_codes_kernel,
            {
                "x_ptr": "*fp32",
                "codes_ptr": "*fp16",
                "sums_ptr": "*fp32",
                "cast_ptr": "*bf16",
                "ranges_ptr": "*fp32",
                "min_ptr": "*fp32",
                "max_ptr": "*fp32",
            },
            # a weight or a linear's fp32 input: row-major (unit column stride)
            {
                "LUT": lut,
                "CAST": 0 if lut else 2,
                "INIT_MINMAX": True,
                "BLOCK_R": 8,
                "BLOCK_C": quantize._CODES_BLOCK_C,
                "EVEN": even,
                "stride_c": 1,
            },
            {"num_warps": 4},
        )
        for suffix, even in (("", True), (", partial blocks", False))
        for lut in (True, False)
    ),
    (
        "quantizer, stochastic + bias",
        quantize._quantize_fwd_kernel,
        {"x_ptr": "*fp32", "y_ptr": "*bf16", "bias_ptr": "*bf16", "p_ptr": "*fp32", "rng_ptr": "*i64"},
        {
            "STOCHASTIC": True,
            "SINGLE_DITHER": False,
            "CLAMP_K": True,
            "LUT": False,
            "CAST": 0,
            "HAS_BIAS": True,
            "BLOCK": 1024,
        },
        {"num_warps": 4},
    ),
    *(
        (
            name,
            ranges._minmax_fold_kernel,
            {
                "x_ptr": "*fp32",
                "row_x": "*fp32",
                "scratch_x": "*fp32",
                "ticket_x": "*i32",
                "y_ptr": "*bf16",
                "row_y": "*fp32",
                "scratch_y": "*fp32",
                "ticket_y": "*i32",
                "counter_ptr": "*i64",
                "copy_from": "*fp32",
                "copy_to": "*fp32",
            },
            {"TWO": two, "COUNT": True, "COPY": not two, "BLOCK": ranges.BLOCK},
            {"num_warps": 8},
        )
        for name, two in (("range fold, two operands + counter", True), ("range fold, one + counter + row copy", False))
    ),
    (
        "range counter + row copy",
        ranges._count_and_copy_kernel,
        {"counter_ptr": "*i64", "copy_from": "*fp32", "copy_to": "*fp32"},
        {"COUNT": True, "COPY": True},
        {"num_warps": 1},
    ),
    (
        "range fold of many weights",
        ranges._minmax_fold_many_kernel,
        {"plan_ptr": "*i32", "table_ptr": "*i64", "like_ptr": "*fp32"},
        {"BLOCK": ranges.BLOCK, "ALIGNED": True},
        {"num_warps": 8},
    ),
    *(
        (
            f"encoder of many weights, LUT{suffix}",
            quantize._weight_codes_kernel,
            {
                "plan_ptr": "*i32",
                "table_ptr": "*i64",
                "like_ptr": "*fp32",
                "codes_ptr": "*fp16",
                "sums_ptr": "*fp32",
                "casts_ptr": "*bf16",
            },
            {
                "LUT": True,
                "CAST": cast,
                "BLOCK_R": quantize._CODES_BLOCK_R,
                "BLOCK_C": quantize._CODES_BLOCK_C,
                "EVEN": True,
            },
            {"num_warps": 4},
        )
        for suffix, cast in (("", 0), (", bf16 copies", 1))
    ),
    (
        "GEMM range reset",
        optical_matmul._reset_minmax_kernel,
        {"min_ptr": "*fp32", "max_ptr": "*fp32"},
        {},
        {"num_warps": 1},
    ),
    (
        "range pair fold",
        ranges._fold_pair_kernel,
        {"lo_ptr": "*fp32", "hi_ptr": "*fp32", "row_ptr": "*fp32"},
        {},
        {"num_warps": 1},
    ),
    *(
        (
            f"softmax forward, causal rows + row stats{suffix}",
            softmax._softmax_fwd_kernel,
            {"s_ptr": "*bf16", "mask_ptr": "*fp32", "rows_ptr": "*i1", "p_ptr": "*bf16", "stats_ptr": "*fp32"}
            | {"norms_ptr": "*fp32"},
            {"HAS_MASK": True, "HAS_ROWS": True, "ROW_STATS": True, "BLOCK": 1024, "FULL_ROW": full, "sm_s": 1}
            | {"SAVE_NORMS": True},
            {"num_warps": softmax.num_warps_for(1024)},
        )
        for suffix, full in (("", True), (", rows shorter than the block", False))
    ),
    *(
        (
            f"softmax backward, causal rows{suffix}",
            softmax._softmax_bwd_kernel,
            {"g_ptr": "*bf16", "s_ptr": "*bf16", "mask_ptr": "*fp32", "rows_ptr": "*i1", "gs_ptr": "*bf16"}
            | {"norms_ptr": "*fp32"},
            {"HAS_MASK": True, "HAS_ROWS": True, "BLOCK": 1024, "FULL_ROW": full, "STORE_READ": read, "sm_s": 1}
            | {"HAS_NORMS": read},
            {"num_warps": softmax.num_warps_for(1024)},
        )
        for suffix, full, read in (
            ("", True, False),
            (", rows shorter than the block", False, False),
            (", dS stored where read", True, True),
        )
    ),
]


def compile_variant(kernel, pointers: dict, meta: dict, options: dict) -> str:
    """PTX of `kernel` for sm_90a with `meta` as constexprs; pointer args typed by `pointers`, the rest int32
    (FLOATS fp32, INT64 int64)."""
    fn = _jitted(kernel)
    signature, divisible = {}, []
    for name in fn.arg_names:
        if name in meta:
            signature[name] = "constexpr"
        elif name in pointers:
            signature[name] = pointers[name]
            if not pointers[name].startswith("tensordesc"):
                divisible.append(name)  # torch's allocations are aligned
        elif name.endswith("_ptr"):
            raise KeyError(f"{fn.__name__}: pointer {name} has no type")
        else:
            signature[name] = "fp32" if name in FLOATS else "i64" if name in INT64 else "i32"
            if name in DIVISIBLE:
                divisible.append(name)
    constexprs = {(fn.arg_names.index(k),): v for k, v in meta.items()}
    attrs = {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name in divisible}
    compiled = triton.compile(
        ASTSource(fn, signature, constexprs=constexprs, attrs=attrs),
        target=TARGET,
        options={**options, "enable_fp_fusion": False},
    )
    return compiled.asm["ptx"]


def registers(ptx: str, workdir: Path) -> str:
    """ptxas -v's register and spill count for the PTX (Triton's bundled ptxas)."""
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not ptxas.exists():
        return "ptxas not bundled"
    source = workdir / "kernel.ptx"
    source.write_text(ptx)
    out = subprocess.run(
        [str(ptxas), "-arch=sm_90a", "-v", str(source), "-o", str(workdir / "kernel.cubin")],
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    regs = re.search(r"Used (\d+) registers", out)
    spills = re.search(r"(\d+) bytes spill stores", out)
    return f"{regs.group(1) if regs else '?'} registers, {spills.group(1) if spills else '?'} bytes spilled"


def main() -> int:
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("compile_sm90: unset TRITON_INTERPRET (the kernels must be jitted to compile them)", file=sys.stderr)
        return 2
    import tempfile

    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, kernel, pointers, meta, options in VARIANTS:
            try:
                print(f"{name}: ok, {registers(compile_variant(kernel, pointers, meta, options), Path(tmp))}")
            except Exception as exc:  # report every variant, then fail
                failed += 1
                print(f"{name}: FAILED\n{exc}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
