"""Compile every Triton kernel ahead of time for a GPU architecture, on any machine, and
report what the GPU compiler made of it. No GPU needed: Triton's own compiler and ptxas.

The interpreter tests (TRITON_INTERPRET=1) check the kernels' arithmetic on the CPU. But the
interpreter runs Python and accepts code that the compiler rejects, for example a loop-carried
value that changes type. This module compiles each kernel as its launcher calls it:

* the same constexprs and block sizes, imported from the kernel modules;
* the ViT-B/16 widths;
* bf16 and fp32 inputs;

for sm_90a (H100/H200) or another architecture. For each kernel it reads ptxas's report:
registers per thread, spilled bytes and shared memory. From these it derives the theoretical
occupancy under CUDA's per-SM limits. That figure is a bound, not a measurement.

    python -m uniemox.kernels.aot                 # sm_90, table on stdout
    python -m uniemox.kernels.aot --arch 80,90 --json aot.json

Run it without TRITON_INTERPRET: under the interpreter `triton.jit` makes no compilable kernel.
"""
import argparse
import json
import math
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence

from . import distillation_triton as distill
from . import masking_triton as masking
from . import reconstruction_triton as recon

VIT_B_WIDTH, VIT_B_DECODER_WIDTH = 768, 512
DTYPES = ("bf16", "fp32")  # activation dtypes, named as Triton's pointer element types
# per-SM limits of the CUDA occupancy rules (compute capability 8.0 / 9.0 / 10.0)
SM_LIMITS = {80: dict(regs=65536, warps=64, blocks=32, smem=163 * 1024),
             90: dict(regs=65536, warps=64, blocks=32, smem=227 * 1024),
             100: dict(regs=65536, warps=64, blocks=32, smem=227 * 1024)}


@dataclass(frozen=True)
class KernelCase:
    """One kernel specialisation as a launcher compiles it."""
    name: str                       # what the report calls it, e.g. "masking.forward"
    kernel: object                  # the @triton.jit function
    pointers: Dict[str, str]        # element type of each pointer argument
    constexprs: Dict[str, object]
    num_warps: int = 4
    floats: Sequence[str] = ()      # scalar arguments passed as Python floats (the rest: int32)


@dataclass
class CompileResult:
    name: str
    kernel: str                         # the @triton.jit function's name
    dtype: str
    arch: int
    ok: bool
    error: str = ""
    seconds: float = 0.0
    num_warps: int = 0
    registers: Optional[int] = None
    spill_stores: Optional[int] = None
    spill_loads: Optional[int] = None
    shared_bytes: Optional[int] = None
    cubin_bytes: int = 0
    occupancy: Optional[float] = None   # resident warps / the SM's maximum (theoretical)
    limited_by: str = ""
    constexprs: Dict[str, object] = field(default_factory=dict)


def cases(dtype: str) -> List[KernelCase]:
    """Every kernel the model launches, with ViT-B/16 widths, for ``dtype`` activations."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    t = dtype
    block_d = masking._block_d(VIT_B_WIDTH)
    mask_blocks = dict(BLOCK_I=masking.BLOCK_I, BLOCK_D=block_d)
    out = [
        KernelCase("masking.forward", masking._mask_fwd_kernel,
                   dict(x_ptr=t, pos_ptr=t, noise_ptr="fp32", kept_ptr=t, mask_ptr=t, ids_ptr="i64"),
                   dict(HAS_POS=True, BLOCK_J=masking.BLOCK_J, **mask_blocks)),
        KernelCase("masking.backward", masking._mask_bwd_kernel,
                   dict(grad_kept_ptr=t, ids_ptr="i64", grad_x_ptr=t), mask_blocks),
        KernelCase("unmask.forward", masking._unmask_fwd_kernel,
                   dict(kept_ptr=t, token_ptr=t, pos_ptr=t, ids_ptr="i64", out_ptr=t),
                   dict(HAS_POS=True, BLOCK_I=masking.BLOCK_I, BLOCK_D=masking._block_d(VIT_B_DECODER_WIDTH))),
        KernelCase("unmask.backward", masking._unmask_bwd_kernel,
                   dict(grad_out_ptr=t, ids_ptr="i64", grad_kept_ptr=t, token_part_ptr="fp32"),
                   dict(BLOCK_I=masking.BLOCK_I, BLOCK_D=masking._block_d(VIT_B_DECODER_WIDTH))),
    ]
    for patch, norm_pix in ((16, True), (16, False), (14, True)):
        meta = recon._launch_meta(patch, norm_pix)
        warps = meta.pop("num_warps")
        variant = f"[p{patch}{', norm_pix' if norm_pix else ''}]"
        out += [
            KernelCase(f"reconstruction.forward{variant}", recon._recon_fwd_kernel,
                       dict(img_ptr=t, pred_ptr=t, mask_ptr=t, loss_ptr="fp32"), meta, warps),
            KernelCase(f"reconstruction.backward{variant}", recon._recon_bwd_kernel,
                       dict(img_ptr=t, pred_ptr=t, mask_ptr=t, grad_loss_ptr="fp32", mask_sum_ptr="fp32",
                            grad_pred_ptr=t), meta, warps),
        ]
    for need_grad in (True, False):
        out.append(KernelCase(f"distillation[{'train' if need_grad else 'eval'}]", distill._distill_kernel,
                              dict(s_ptr=t, o_ptr=t, t_ptr=t, rows_ptr="fp32", gsim_ptr="fp32", gcon_ptr="fp32"),
                              dict(NEED_GRAD=need_grad, BLOCK_B=distill.BLOCK_B, BLOCK_M=distill.BLOCK_M,
                                   BLOCK_C=distill.BLOCK_C, PRECISION=distill.DOT_PRECISION),
                              floats=("eps",)))
    return out


def signature(case: KernelCase) -> Dict[str, str]:
    """Triton's signature of ``case``: pointers typed, the other runtime scalars int32 or fp32."""
    sig = {}
    for param in case.kernel.params:
        name = param.name
        if param.is_constexpr:
            if name not in case.constexprs:
                raise ValueError(f"{case.name}: no value for constexpr {name}")
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            if name not in case.pointers:
                raise ValueError(f"{case.name}: no element type for pointer {name}")
            sig[name] = "*" + case.pointers[name]
        else:
            sig[name] = "fp32" if name in case.floats else "i32"
    unknown = set(case.pointers) - {k for k, v in sig.items() if v.startswith("*")}
    if unknown:
        raise ValueError(f"{case.name}: the kernel has no pointer argument {sorted(unknown)}")
    return sig


def ptxas_report(ptx: str, arch: int) -> Dict[str, int]:
    """Registers and spilled bytes of the kernel in ``ptx``, from ptxas -v with the options
    Triton compiles with."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    gpu = sm_arch_from_capability(arch)
    with tempfile.TemporaryDirectory() as tmp:
        src = f"{tmp}/kernel.ptx"
        with open(src, "w") as f:
            f.write(ptx)
        run = subprocess.run([get_ptxas(arch).path, "-lineinfo", "-v", "--regAllocOptLevel=2",
                              f"--gpu-name={gpu}", src, "-o", f"{tmp}/kernel.cubin"],
                             capture_output=True, text=True)
    if run.returncode:
        raise RuntimeError(f"ptxas failed: {run.stderr.strip()}")
    log = run.stderr

    def number(pattern: str) -> int:
        found = re.search(pattern, log)
        if not found:
            raise RuntimeError(f"unexpected ptxas report (no {pattern!r}):\n{log}")
        return int(found.group(1))

    return {"registers": number(r"Used (\d+) registers"), "spill_stores": number(r"(\d+) bytes spill stores"),
            "spill_loads": number(r"(\d+) bytes spill loads")}


def occupancy(registers: int, shared_bytes: int, num_warps: int, arch: int):
    """(resident warps / maximum, the limit that binds) under CUDA's occupancy rules:
    registers are allocated per warp in units of 256, and each block reserves 1 KiB of
    shared memory for the system."""
    limits = SM_LIMITS.get(arch, SM_LIMITS[90])
    regs_per_warp = math.ceil(registers * 32 / 256) * 256
    by = {"registers": (limits["regs"] // regs_per_warp) // num_warps if regs_per_warp else limits["blocks"],
          "warps": limits["warps"] // num_warps,
          "blocks": limits["blocks"],
          "shared memory": limits["smem"] // (shared_bytes + 1024)}
    bound = min(by, key=by.get)
    return by[bound] * num_warps / limits["warps"], bound


def compile_case(case: KernelCase, dtype: str, arch: int) -> CompileResult:
    """Compile ``case`` for sm_``arch``; a compiler error is a failed result, not an exception."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    result = CompileResult(case.name, case.kernel.fn.__name__, dtype, arch, ok=False, num_warps=case.num_warps,
                           constexprs=dict(case.constexprs))
    start = time.perf_counter()
    try:
        src = ASTSource(fn=case.kernel, signature=signature(case), constexprs=dict(case.constexprs))
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": case.num_warps})
        result.shared_bytes = int(compiled.metadata.shared)
        result.cubin_bytes = len(compiled.asm["cubin"])
        for key, value in ptxas_report(compiled.asm["ptx"], arch).items():
            setattr(result, key, value)
        result.occupancy, result.limited_by = occupancy(result.registers, result.shared_bytes, case.num_warps, arch)
        result.ok = True
    except Exception as e:  # the compiler's message is the finding
        result.error = f"{type(e).__name__}: {e}".strip()
    result.seconds = time.perf_counter() - start
    return result


def compile_all(archs: Sequence[int] = (90,), dtypes: Sequence[str] = ("bf16", "fp32")) -> List[CompileResult]:
    return [compile_case(case, dtype, arch) for arch in archs for dtype in dtypes for case in cases(dtype)]


def format_table(results: Sequence[CompileResult]) -> str:
    lines = [f"{'kernel':<40}{'dtype':>6}{'sm':>5}{'warps':>6}{'regs':>6}{'spill B':>9}{'smem KiB':>10}"
             f"{'occupancy':>11}  limited by"]
    for r in results:
        head = f"{r.name:<40}{r.dtype:>6}{r.arch:>5}{r.num_warps:>6}"
        if not r.ok:
            lines.append(f"{head}  FAILED: {r.error.splitlines()[0] if r.error else '?'}")
            continue
        lines.append(f"{head}{r.registers:>6}{r.spill_stores + r.spill_loads:>9}{r.shared_bytes / 1024:>10.1f}"
                     f"{r.occupancy:>10.0%}  {r.limited_by}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="90", help="comma-separated compute capabilities: 80 (A100), "
                                                "90 (H100/H200, the default), 100 (B200)")
    p.add_argument("--dtype", default="bf16,fp32", help="comma-separated activation dtypes: bf16, fp32")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    from .dispatch import interpreter_enabled, triton_available

    if not triton_available():
        print("error: triton is not importable", file=sys.stderr)
        return 2
    if interpreter_enabled():
        print("error: TRITON_INTERPRET=1 is set: the interpreter builds no compilable kernels; "
              "unset it", file=sys.stderr)
        return 2
    try:
        archs = [int(a) for a in args.arch.split(",") if a.strip()]
    except ValueError:
        print(f"error: --arch takes comma-separated integers, got {args.arch!r}", file=sys.stderr)
        return 2
    dtypes = [d.strip() for d in args.dtype.split(",") if d.strip()]
    bad = sorted(set(dtypes) - set(DTYPES))
    if bad or not dtypes or not archs:
        print(f"error: --dtype takes {', '.join(DTYPES)}; --arch at least one", file=sys.stderr)
        return 2
    results = compile_all(archs, dtypes)
    print(format_table(results))
    if args.json:
        import triton
        from triton.backends.nvidia.compiler import get_ptxas_version

        payload = {"what": "static compile report: Triton -> PTX -> ptxas, no GPU involved",
                   "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "triton": triton.__version__,
                   "ptxas": {str(a): next((line for line in get_ptxas_version(a).splitlines() if "release" in line),
                                          "?") for a in archs},
                   "results": [asdict(r) for r in results]}
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=1)
    failed = [r for r in results if not r.ok]
    spilled = [r for r in results if r.ok and r.spill_stores + r.spill_loads]
    print(f"{len(results) - len(failed)}/{len(results)} compiled; {len(spilled)} spill registers to local memory",
          file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
