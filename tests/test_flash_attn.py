"""Triton fused attention vs an fp64 plain-math reference (forward and dq/dk/dv).

Runs through the Triton interpreter on CPU.  Triton fixes interpreted vs
compiled when it is first imported, so TRITON_INTERPRET must be set before that
(tests/conftest.py does it for the whole run; the setdefault below covers running
this file alone).  If triton was already imported in the other mode,
triton_available() says so and every test here is skipped with that reason.
With TRITON_INTERPRET=0 on a GPU machine the same tests run on CUDA instead.

The second half compiles the kernels ahead of time for sm80/86/89/90 (no GPU needed) with a real
launch's specialisation and checks the machine code: vector loads, no register spills, shared
memory within each architecture's limit (pytest -m slow for all four architectures in fp32 too).
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
    (2, 1, 50, 80),   # D = 64 + 16: a head-dim tail chunk that needs no mask
    (1, 2, 19, 88),   # D = 64 + 32: a masked tail chunk
    (1, 1, 64, 64),
    (2, 2, 21, 20),   # D = 16 + 16 with 12 masked, strides not multiples of 8
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


def test_every_gpu_tile_shape_matches_fp64_reference():
    """The autotuner only ever runs its winner, so each GPU tile configuration (16-bit and fp32 lists)
    is forced once here, at a head dim with a masked tail chunk and N smaller than some tiles."""
    for dtype in (torch.bfloat16, torch.float32):
        configs = {kind: fa._gpu_configs(kind, dtype) for kind in fa.KINDS}
        q, k, v, do = _inputs((1, 2, 45, 88), dtype, seed=4)
        ref = _reference(q, k, v, do, 88 ** -0.5)
        for i in range(max(map(len, configs.values()))):
            forced = {kind: cfgs[i] for kind, cfgs in configs.items() if i < len(cfgs)}
            with fa.forced_configs(**forced):
                got = _run(q, k, v, do)
            try:
                _check(got, ref, TOL[dtype], dtype)
            except AssertionError as exc:
                raise AssertionError(f"{dtype} {[fa.config_name(c) for c in forced.values()]}: {exc}") from None


def test_head_dim_split_and_stride_alignment():
    # The head dim is covered by a power-of-two chunk plus a power-of-two tail (8 % padding at
    # G's 88 instead of 31 % for a 128 tile); ALIGN is what the kernels tell the compiler about strides.
    assert [fa._split_d(d) for d in (16, 20, 32, 64, 80, 88, 110, 128)] == [
        (16, 0), (16, 16), (32, 0), (64, 0), (64, 16), (64, 32), (64, 64), (128, 0)]
    qkv = torch.empty(2, 972, 3, 16, 88).permute(2, 0, 3, 1, 4)  # the model's q/k/v views at G
    assert fa._align([qkv[0], qkv[1]]) == 8
    assert fa._align([torch.empty(1, 16, 192, 80)]) == 16
    assert fa._align([torch.empty(2, 2, 21, 20)]) == 4
    assert fa._align([torch.empty(1, 1, 21, 20)]) == 4  # size-1 dims do not count, N's stride does


def test_cpu_model_on_a_gpu_host_falls_back_to_sdpa_with_one_note(monkeypatch, caplog):
    """A model on the CPU of a GPU machine (``infer --device cpu`` with the G config, a CPU export)
    must use SDPA with one note, as on a machine without a GPU, not raise "needs CUDA tensors".
    The GPU host is faked: compiled (not interpreted) Triton, torch seeing an sm90 device."""
    import logging

    from vitpose_scale.config import ModelConfig
    from vitpose_scale.models import attention as attn_mod
    from vitpose_scale.models.pose import build_pose_model

    monkeypatch.setattr(fa, "_interpreting", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Faked H100")
    monkeypatch.setattr(attn_mod, "_warned_fallback", set())
    assert triton_available()[0], "the faked host must look like one where Triton runs"

    torch.manual_seed(0)
    model = build_pose_model(ModelConfig(preset="tiny", depth=2, image_size=[64, 48], attention="triton")).train()
    x = torch.randn(2, 3, 64, 48)
    with caplog.at_level(logging.WARNING, logger=attn_mod.__name__):
        out = model(x)
        out.square().mean().backward()  # backward too: every layer, twice, still one note
        with torch.no_grad():
            out2 = model(x)
    notes = [r.getMessage() for r in caplog.records if "model.attention=triton is unavailable" in r.getMessage()]
    assert len(notes) == 1, notes
    assert "cpu" in notes[0] and "using sdpa" in notes[0]
    model.backbone.set_attention("sdpa")
    with torch.no_grad():
        ref = model(x)
    assert torch.equal(out.detach(), ref) and torch.equal(out2, ref)


def test_model_with_triton_attention_matches_sdpa():
    """The whole ViTPose block stack with model.attention=triton (interpreter, or the GPU with
    TRITON_INTERPRET=0) equals sdpa."""
    from vitpose_scale.config import ModelConfig
    from vitpose_scale.models.pose import build_pose_model

    ok, reason = triton_available()
    assert ok, reason  # conftest turns the interpreter on before triton is imported
    torch.manual_seed(0)
    cfg = ModelConfig(preset="tiny", depth=2, image_size=[64, 48], attention="sdpa")
    model = build_pose_model(cfg).to(DEVICE).train()
    x = torch.randn(2, 3, 64, 48, device=DEVICE, requires_grad=True)
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


# ---------------------------------------------------------------------------------------------
# Ahead-of-time compiles for real GPU architectures (no GPU needed: triton ships ptxas and
# cuobjdump), with the specialisation a real launch gets: flash_attn.launch_plan builds the very
# arguments flash_attention launches with (here the model's strided q/k/v views) and lets
# triton's own launcher code derive divisibility and alignment from them.  In subprocesses: a
# process that imported triton under TRITON_INTERPRET=1 cannot compile.  Two in parallel.
# ---------------------------------------------------------------------------------------------
_AOT_SCRIPT = r"""
import json, sys
try:
    import torch
    import triton
    from triton.backends.compiler import GPUTarget  # noqa: F401
    from triton.runtime.jit import create_function_from_signature  # noqa: F401
    from vitpose_scale.kernels import flash_attn as fa
except Exception as exc:  # internal API moved in another triton version
    print(json.dumps({"skip": f"triton AOT compile API unavailable: {exc}"})); sys.exit(0)
out = []
for job in json.loads(sys.argv[1]):
    dtype = getattr(torch, job["dtype"])
    # (B, N, 3, H, D) -> three (B, H, N, D) views: what models/attention.py hands the kernel.
    qkv = torch.empty(2, job["N"], 3, 16, job["D"], dtype=dtype).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    try:
        plan = fa.launch_plan(q, k, v, kinds=("fwd", "dkdv", "dq", "pre"), capability=job["cap"], smem=job.get("smem"))
    except (FileNotFoundError, RuntimeError) as exc:
        if "ptxas" in str(exc).lower():
            print(json.dumps({"skip": f"no ptxas: {exc}"})); sys.exit(0)
        raise
    res = dict(job, kinds={kind: [dict(name=e["name"], fits=e["fits"], limit=e["limit"], **fa.compiled_stats(e["kernel"]))
                                  for e in entries] for kind, entries in plan.items()})
    res["unsupported"] = fa.unsupported_reason(q, k, v, capability=job["cap"], smem=job.get("smem"))
    # The autotuner's prune hook, called as triton's Autotuner.run calls it (its own grid/warmup
    # keywords included): the configurations it lets the autotuner launch, or why none.
    res["pruned"] = {}
    for kind, (args, consts, grid) in fa._plan_launches(q, k, v).items():
        if kind == "pre":
            continue
        fn = fa._kernels()[kind]
        hook = fa._prune_hook(kind, capability=job["cap"], smem=job.get("smem"))
        try:
            kept = hook(fa._gpu_configs(kind, dtype), dict(zip(fn.arg_names, args)), grid=grid, warmup=False, **consts)
            res["pruned"][kind] = [fa.config_name(c) for c in kept]
        except fa.NoFittingConfig as exc:
            res["pruned"][kind] = str(exc)
    out.append(res)
print(json.dumps(out))
"""

# Each preset's (head dim, tokens): S 32, B/L 64, H 80 at 256x192 (192 tokens), G 88 at 576x432 (972).
PRESET_SHAPES = {"S": (32, 192), "B/L": (64, 192), "H": (80, 192), "G": (88, 972)}
ARCHS = (80, 86, 89, 90)
SMALL_SMEM = 40 * 1024  # a made-up GPU: some configs fit, some do not, and the fp32 backward none


def _run_aot(*groups):
    """Each group of jobs in its own subprocess, all in parallel (2 cores: two groups).  A job with
    ``smem`` goes after its plain twin in the same group: triton's cache then makes it free."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    procs = [subprocess.Popen([sys.executable, "-c", _AOT_SCRIPT, json.dumps(g)], cwd=root, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for g in groups]
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=840)
        assert proc.returncode == 0, stdout[-2000:] + stderr[-3000:]
        data = json.loads(stdout.strip().splitlines()[-1])
        if isinstance(data, dict) and "skip" in data:
            pytest.skip(data["skip"])
        results += data
    return results


def _job(cap, dtype, d=88, n=972, smem=None):
    return dict(cap=cap, dtype=dtype, D=d, N=n, smem=smem)


@pytest.fixture(scope="module")
def aot():
    """sm90 bf16 at every preset's shape; sm86 (the 99 KB of shared memory of sm86/sm89) at G's
    tiles, the largest, in bf16 and fp32, and the same on a 40 KB GPU.  About a minute on 2 cores
    with an empty triton cache (~/.triton/cache), seconds after."""
    sm90 = [_job(90, "bfloat16", d, n) for d, n in PRESET_SHAPES.values()]
    return _run_aot(sm90[:2] + [_job(86, "bfloat16"), _job(86, "bfloat16", smem=SMALL_SMEM)],
                    sm90[2:] + [_job(86, "float32"), _job(86, "float32", smem=SMALL_SMEM)])


@pytest.fixture(scope="module")
def aot_archs():
    """G's tiles on sm80, sm86, sm89 and sm90, bf16 and fp32 (fp32 compiles slowly: minutes)."""
    jobs = [_job(cap, dt) for cap in ARCHS for dt in ("float32", "bfloat16")]
    return _run_aot(jobs[0::2], jobs[1::2])


def _pick(results, **match):
    return [r for r in results if all(r.get(k) == v for k, v in match.items())]


def test_compiled_kernels_load_vectorised_without_spills_sm90(aot):
    """Each preset's head dim on sm90 (bf16, the training dtype), every autotune configuration of
    every kernel: Q/K/V/dO tiles load as 16-byte vectors through cp.async, never element by element
    (G's 88 did: a runtime head dim and strides of unknown divisibility masked every load), and no
    configuration spills registers to local memory (all dK/dV ones did at 80 and 88)."""
    for preset, (d, n) in PRESET_SHAPES.items():
        (res,) = _pick(aot, cap=90, dtype="bfloat16", D=d, N=n)
        for kind, entries in res["kinds"].items():
            for e in entries:
                where = f"{preset} (D={d}, N={n}) {kind} {e['name']}"
                assert e["vector_loads"] > 0 and e["scalar_16bit_loads"] == 0, (where, e)
                if kind != "pre":  # the elementwise pre-pass has nothing to pipeline
                    assert e["cp_async"] > 0, (where, e)
                assert e["spill_bytes"] == 0, (where, e)
                assert e["fits"], (where, e)


def _check_fits(results, cap, dtype):
    (res,) = _pick(results, cap=cap, dtype=dtype, D=88, N=972, smem=None)
    assert res["unsupported"] is None, (cap, dtype, res["unsupported"])
    for kind, entries in res["kinds"].items():
        limit = fa.SMEM_PER_BLOCK[cap]
        assert all(e["limit"] == limit and e["shared"] <= limit and e["fits"] for e in entries), \
            (cap, dtype, kind, [(e["name"], e["shared"]) for e in entries])
        assert any(e["spill_bytes"] == 0 for e in entries), (cap, dtype, kind, entries)


def test_tile_configs_fit_sm86(aot):
    """sm86/sm89 (99 KB of shared memory per block: A10, L40S, RTX cards) at G's tiles (the largest),
    bf16 and fp32: every candidate the autotuner may launch fits (the fp32 backward ones needed
    104-224 KB, and the autotuner would have launched one anyway and failed with OutOfResources),
    and each kernel keeps a spill-free choice."""
    for dtype in ("bfloat16", "float32"):
        _check_fits(aot, 86, dtype)


@pytest.mark.slow
def test_tile_configs_fit_every_architecture(aot_archs):
    """The same on sm80 (163 KB), sm86, sm89 (99 KB) and sm90 (227 KB), each compiled for itself."""
    for cap in ARCHS:
        for dtype in ("bfloat16", "float32"):
            _check_fits(aot_archs, cap, dtype)


def test_configs_that_do_not_fit_are_dropped_and_none_fitting_falls_back(aot):
    """On a GPU with less shared memory the launcher keeps exactly the configurations that fit;
    where none of a kernel's fits, unsupported_reason says so (models/attention.py then uses SDPA
    with that note instead of launching a kernel that fails with OutOfResources)."""
    for dtype in ("bfloat16", "float32"):
        (res,) = _pick(aot, cap=86, dtype=dtype, smem=SMALL_SMEM)
        for kind, entries in res["kinds"].items():
            assert all(e["fits"] == (e["shared"] <= SMALL_SMEM) for e in entries), (dtype, kind, entries)
            if kind != "pre":  # what the autotuner is left with: exactly those, or an error naming the limit
                fitting = [e["name"] for e in entries if e["fits"]]
                assert res["pruned"][kind] == (fitting or res["pruned"][kind]), (dtype, kind, res["pruned"][kind])
                if not fitting:
                    assert "shared memory (40 KB" in res["pruned"][kind]
    (bf16,) = _pick(aot, cap=86, dtype="bfloat16", smem=SMALL_SMEM)
    assert any(e["fits"] for e in bf16["kinds"]["fwd"]) and not all(e["fits"] for e in bf16["kinds"]["fwd"])
    (fp32,) = _pick(aot, cap=86, dtype="float32", smem=SMALL_SMEM)
    assert fp32["unsupported"] is not None and "shared memory (40 KB" in fp32["unsupported"], fp32["unsupported"]
