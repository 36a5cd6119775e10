"""Compile DeepSpeed's CPU ops once, at set-up, into the project's extension cache.

DeepSpeed builds an op the first time a process needs it (deepspeed_shm_comm on every CPU start,
cpu_adam for ZeRO-Offload): minutes with no output, inside the first training run or test that
happens to need it. Building them here, as `DS_BUILD_OPS=1 pip install deepspeed` would on a GPU
machine, moves that wait into set-up, where it is expected. The builds run side by side (one
compiler each). An op already in $TORCH_EXTENSIONS_DIR is not rebuilt; a failed build is reported
and left to the first run (which prints its own note), so set-up never fails for it.
"""
import os
import subprocess
import sys
import time

OPS = {"deepspeed_shm_comm": "ShareMemCommBuilder", "cpu_adam": "CPUAdamBuilder"}


def main() -> int:
    if os.environ.get("DS_ACCELERATOR") != "cpu":
        return 0  # GPU machines build their own ops (or ship them prebuilt)
    from vitpose_scale.engine.op_cache import is_built

    missing = [op for op in OPS if not is_built(op)]
    if not missing:
        return 0
    print(f"== compiling DeepSpeed's CPU ops {', '.join(missing)} once (a few minutes; later starts reuse them)",
          flush=True)
    start = time.time()
    procs = {op: subprocess.Popen([sys.executable, "-c", f"from deepspeed.ops.op_builder.cpu import {OPS[op]} as B; "
                                   "B().load(verbose=False)"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True) for op in missing}
    for op, proc in procs.items():
        out, _ = proc.communicate()
        if proc.returncode != 0:
            tail = "\n".join(out.strip().splitlines()[-5:])
            print(f"warning: {op} did not compile here; the first run that needs it will try again:\n{tail}",
                  file=sys.stderr)
    print(f"== DeepSpeed ops ready in {time.time() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
