# Sourced by the scripts: CPU DeepSpeed and a project-local extension cache (one shm_comm compile).
export DS_ACCELERATOR=${DS_ACCELERATOR:-$(python3 -c 'import shutil; print("cuda" if shutil.which("nvidia-smi") else "cpu")' 2>/dev/null || echo cpu)}
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}
export VITPOSE_SCALE_BUILD_DIR=${VITPOSE_SCALE_BUILD_DIR:-$PWD/.cache/build}  # data/jpeg_region.c, built on first use
export PATH="$PWD/.venv/bin:$PATH"
export PYTHONUNBUFFERED=1
