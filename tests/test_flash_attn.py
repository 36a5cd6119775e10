"""Triton fused attention vs an fp64 plain-math reference (forward and dq/dk/dv).

Runs through the Triton interpreter on CPU.  Triton fixes interpreted vs
compiled when it is first imported, so TRITON_INTERPRET must be set before that
(tests/conftest.py does it for the whole run; the setdefault below covers running
this file alone).  If triton was already imported in the other mode,
triton_available() says so and every test here is skipped with that reason.
With TRITON_INTERPRET=0 on a GPU machine the same tests run on CUDA instead.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import math  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from vitpose_scale.kernels import flash_attn as fa  # noqa: E402
from vitpose_scale.kernels.flash_attn import flash_attention, triton_available  # noqa: E402

_OK, _WHY = triton_available()
pytestmark = pytest.mark.skipif(not _OK, reason=f"triton kernels cannot run here: {_WHY}")

DEVICE = "cpu" if fa._interpreting() else "cuda"

# Max abs error allowed vs the fp64 reference, on outputs and on dq/dk/dv, for
# unit-normal q/k/v/dO at these sizes (outputs and grads are O(1)).
#  fp32: observed ~5e-7; 1e-4 leaves room for GPU reduction-order differences
#        (fp32 dots use input_precision="ieee", not tf32).
#  fp16: inputs/P/dS rounded to 11-bit mantissa (eps 4.9e-4); observed <1e-3.
#  bf16: 8-bit mantissa (eps 3.9e-3); P and dS are rounded to bf16 before the
#        second matmul, like FlashAttention-2; observed <=1.3e-2 on grads.
TOL = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}

SHAPES = [  # (B, H, N, D): ragged N, non-power-of-two D
    (1, 2, 37, 32),
    (2, 1, 50, 80),
    (1, 2, 19, 88),
    (1, 1, 64, 64),
]


def _reference(q, k, v, do, scale):
    qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
    out = torch.softmax((qd @ kd.transpose(-1, -2)) * scale, dim=-1) @ vd
    out.backward(do.double())
    return out.detach(), qd.grad, kd.grad, vd.grad


def _run(q, k, v, do, scale=None):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out = flash_attention(q, k, v, scale=scale)
    out.backward(do)
    return out.detach(), q.grad, k.grad, v.grad


def _check(got, ref, tol, dtype):
    for name, g, r in zip(("out", "dq", "dk", "dv"), got, ref):
        assert g.dtype == dtype, name
        assert torch.isfinite(g).all(), name
        err = (g.double() - r).abs().max().item()
        assert err <= tol, f"{name}: max abs err {err:.3e} > {tol:.1e}"


def _inputs(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=torch.float32).to(DEVICE, dtype) for _ in range(4)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_fp64_reference(shape, dtype):
    q, k, v, do = _inputs(shape, dtype)
    got = _run(q, k, v, do)
    assert got[0].shape == q.shape
    _check(got, _reference(q, k, v, do, 1.0 / math.sqrt(shape[-1])), TOL[dtype], dtype)


def test_bf16_interpreter_upcast():
    """Triton 3.x's interpreter multiplies raw bf16 bits in tl.dot (errors ~1e8 without the
    upcast, checked with triton 3.8), so a pass here proves the UPCAST path works."""
    if not fa._interpreting():
        pytest.skip("interpreter-only check")
    q, k, v, do = _inputs((1, 1, 37, 32), torch.bfloat16, seed=1)
    assert fa._common(q)[1], "bf16 under TRITON_INTERPRET must select UPCAST"
    got = _run(q, k, v, do)
    _check(got, _reference(q, k, v, do, 32 ** -0.5), TOL[torch.bfloat16], torch.bfloat16)


def test_strided_views_custom_scale_and_pad_to_128():
    """Permuted views of a fused qkv tensor (no copy), explicit scale, D=110 padded to 128, N=1 tile edge."""
    B, N, H, D = 2, 17, 2, 110
    g = torch.Generator().manual_seed(2)
    qkv = torch.randn(B, N, 3, H, D, generator=g).to(DEVICE).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    assert not q.is_contiguous() and q.stride(-1) == 1
    do = torch.randn(B, H, N, D, generator=g).to(DEVICE)
    _check(_run(q, k, v, do, scale=0.05), _reference(q, k, v, do, 0.05), TOL[torch.float32], torch.float32)

    q1, k1, v1, do1 = _inputs((1, 1, 1, 48), torch.float32, seed=3)
    _check(_run(q1, k1, v1, do1), _reference(q1, k1, v1, do1, 48 ** -0.5), TOL[torch.float32], torch.float32)


def test_rejects_bad_inputs():
    q = torch.randn(1, 1, 8, 32, device=DEVICE)
    with pytest.raises(ValueError):
        flash_attention(q, q[:, :, :4], q)
    with pytest.raises(TypeError):
        flash_attention(q, q.half(), q)
    with pytest.raises(ValueError):
        flash_attention(torch.randn(1, 1, 8, 160, device=DEVICE), *[torch.randn(1, 1, 8, 160, device=DEVICE)] * 2)


def test_triton_available_refuses_a_mode_flipped_after_import(monkeypatch):
    """Triton fixes interpreted vs compiled when imported; a TRITON_INTERPRET flipped later is refused
    with the reason (the kernels would break), instead of being reported as available."""
    baked = fa._imported_interpret()
    assert baked is not None, "cannot tell how triton was imported (internal API moved?)"
    monkeypatch.setenv("TRITON_INTERPRET", "0" if baked else "1")
    ok, why = triton_available()
    assert not ok
    assert f"triton was imported {'with' if baked else 'without'} the interpreter" in why
    monkeypatch.setenv("TRITON_INTERPRET", "1" if baked else "0")
    assert triton_available()[0]


_AOT_SCRIPT = r"""
import sys
try:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
except Exception as exc:  # internal API moved in another triton version
    print("SKIP triton AOT compile API unavailable:", exc); sys.exit(0)
from vitpose_scale.kernels import flash_attn as fa
ks = fa._kernels()
ptrs = {"Q", "K", "V", "O", "DO", "DK", "DV", "DQ"}
for kind, consts, warps, stages in [
    ("fwd", dict(BLOCK_M=128, BLOCK_N=64, BLOCK_D=128), 8, 3),
    ("dkdv", dict(BLOCK_M=64, BLOCK_N=64, BLOCK_D=128), 4, 2),
    ("dq", dict(BLOCK_M=64, BLOCK_N=64, BLOCK_D=128), 4, 2),
]:
    fn = ks[kind]
    consts = dict(consts, UPCAST=False, PREC="tf32")
    sig = {n: ("constexpr" if n in consts else "*bf16" if n in ptrs else "*fp32" if n in ("LSE", "DELTA")
               else "fp32" if n.endswith("scale") else "i32") for n in fn.arg_names}
    try:
        k = triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", 90, 32),
                           options={"num_warps": warps, "num_stages": stages})
    except (FileNotFoundError, RuntimeError) as exc:
        if "ptxas" in str(exc).lower():
            print("SKIP no ptxas:", exc); sys.exit(0)
        raise
    assert k.metadata.shared <= 227 * 1024, (kind, k.metadata.shared)  # H100 smem per block
    print(kind, "ok, smem", k.metadata.shared)
"""


def test_gpu_kernels_compile_for_sm90():
    """Ahead-of-time compile (no GPU needed: triton ships ptxas) of the non-interpreted bf16
    kernels at the ViT-g tile shape, so the GPU-only code path is at least compiled here.
    In a subprocess: a process that imported triton under TRITON_INTERPRET=1 cannot compile."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", _AOT_SCRIPT], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    if proc.stdout.startswith("SKIP"):
        pytest.skip(proc.stdout.strip())
    assert proc.stdout.count(" ok,") == 3, proc.stdout


def test_model_with_triton_attention_matches_sdpa():
    """The whole ViTPose block stack with model.attention=triton (interpreter) equals sdpa."""
    from vitpose_scale.config import ModelConfig
    from vitpose_scale.models.pose import build_pose_model

    ok, reason = triton_available()
    assert ok, reason  # conftest turns the interpreter on before triton is imported
    torch.manual_seed(0)
    cfg = ModelConfig(preset="tiny", depth=2, image_size=[64, 48], attention="sdpa")
    model = build_pose_model(cfg).train()
    x = torch.randn(2, 3, 64, 48, requires_grad=True)
    ref = model(x)
    ref.square().mean().backward()
    ref_grads = [p.grad.clone() for p in model.parameters()] + [x.grad.clone()]
    model.zero_grad()
    x.grad = None
    model.backbone.set_attention("triton")
    out = model(x)
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters()] + [x.grad]
    assert (out - ref).abs().max() < 1e-5
    for a, b in zip(grads, ref_grads):
        assert (a - b).abs().max() < 1e-5
