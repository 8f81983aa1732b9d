#!/usr/bin/env bash
# Builds Horovod 0.28.1 (its last release) against the installed torch.
# As published it asks for C++14, which torch >= 2.1 headers reject; the sdist builds once the
# standard is raised to 17.
#
#   PYTHON=.venv/bin/python bash .ci/install-horovod.sh                  # CPU: Gloo only
#   HOROVOD_GPU=NCCL PYTHON=.venv/bin/python bash .ci/install-horovod.sh # + NCCL GPU allreduce
#   DRY_RUN=1 ...                                                        # print, build nothing
#
# Rebuilds only when needed: the build records the torch it was built against (torch version,
# its CUDA version, the GPU operations) in horovod/.hepscan-built-against; a different torch
# (e.g. the CUDA build replacing the CPU one) or a different HOROVOD_GPU triggers a rebuild.
#
# GPU build (HOROVOD_GPU=NCCL): needs nvcc and the CUDA headers of torch's CUDA version, and the
# NCCL headers/library. NCCL comes from the nvidia-nccl-cu12 wheel that the PyPI CUDA torch
# installs (HOROVOD_NCCL_HOME is pointed at it). CUDA: $CUDA_HOME, else an nvcc on PATH (on a
# cluster: `module load cuda/12.x`, the version torch.version.cuda prints), else the pip wheels
# nvidia-cuda-nvcc-cu12 + nvidia-cuda-runtime-cu12 of that version, merged into one toolkit tree.
set -euo pipefail
run() { if [ -n "${DRY_RUN:-}" ]; then echo "+ $*"; else "$@"; fi; }
PY=${PYTHON:-python}
GPU=${HOROVOD_GPU:-}
case "$GPU" in "" | NCCL) ;; *) echo "HOROVOD_GPU must be empty or NCCL, got '$GPU'" >&2; exit 2;; esac

want=$("$PY" -c "import torch; print(f'torch={torch.__version__} cuda={torch.version.cuda} gpu=${GPU:-none}')")
have=$("$PY" - <<'EOF' 2>/dev/null || true
import os
import horovod
import horovod.torch  # noqa: F401  - must import against the installed torch
stamp = os.path.join(os.path.dirname(horovod.__file__), ".hepscan-built-against")
print(open(stamp).read().strip() if os.path.exists(stamp) else "unknown")
EOF
)
if [ -n "$have" ]; then
  if [ "$have" = "$want" ]; then
    echo "horovod already built against $want"
    exit 0
  fi
  if [ "$have" = "unknown" ] && [ -z "$GPU" ]; then
    # built by an earlier version of this script (CPU only, it imports against this torch):
    # record it instead of rebuilding
    run "$PY" -c "import horovod, os; open(os.path.join(os.path.dirname(horovod.__file__), '.hepscan-built-against'), 'w').write('$want\n')"
    echo "horovod already built (recorded: $want)"
    exit 0
  fi
  echo "horovod was built against '$have', now '$want': rebuilding"
fi

export CMAKE_POLICY_VERSION_MINIMUM=3.5 HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 \
  HOROVOD_WITHOUT_MPI=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1
export MAKEFLAGS="-j$(nproc)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [ "$GPU" = "NCCL" ]; then
  cuda=$("$PY" -c "import torch; print(torch.version.cuda or '')")
  if [ -z "$cuda" ]; then
    echo "HOROVOD_GPU=NCCL but the installed torch is a CPU build: install the CUDA torch first (make install-gpu)" >&2
    exit 2
  fi
  nccl=$("$PY" -c "import nvidia.nccl, os; print(os.path.dirname(nvidia.nccl.__file__) if nvidia.nccl.__file__ else list(nvidia.nccl.__path__)[0])" 2>/dev/null || true)
  if [ -z "$nccl" ]; then
    echo "no nvidia-nccl wheel next to torch: set HOROVOD_NCCL_HOME to the site's NCCL" >&2
    [ -n "${HOROVOD_NCCL_HOME:-}" ] || exit 2
  else
    export HOROVOD_NCCL_HOME="${HOROVOD_NCCL_HOME:-$nccl}"
    # the wheel ships libnccl.so.2 only; the linker wants libnccl.so
    [ -e "$HOROVOD_NCCL_HOME/lib/libnccl.so" ] || run ln -s libnccl.so.2 "$HOROVOD_NCCL_HOME/lib/libnccl.so"
  fi
  if [ -z "${CUDA_HOME:-}" ]; then
    if command -v nvcc >/dev/null; then
      CUDA_HOME=$(dirname "$(dirname "$(command -v nvcc)")")
    else
      major_minor=$cuda  # torch.version.cuda is MAJOR.MINOR
      echo "no nvcc on PATH: using the pip CUDA $cuda toolkit wheels (or: module load cuda/$cuda)"
      run "$PY" -m pip install -q "nvidia-cuda-nvcc-cu12==${major_minor}.*" "nvidia-cuda-runtime-cu12==${major_minor}.*"
      site=$("$PY" -c "import nvidia, os; print(list(nvidia.__path__)[0])")
      CUDA_HOME="$work/cuda"
      run mkdir -p "$CUDA_HOME"
      for part in cuda_nvcc cuda_runtime; do
        for sub in bin include lib lib64 nvvm; do
          if [ -d "$site/$part/$sub" ]; then run cp -rs "$site/$part/$sub" "$CUDA_HOME/" ; fi
        done
      done
    fi
  fi
  export CUDA_HOME CUDAToolkit_ROOT="$CUDA_HOME" HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_GPU=CUDA
  export PATH="$CUDA_HOME/bin:$PATH"
  echo "GPU build: CUDA_HOME=$CUDA_HOME HOROVOD_NCCL_HOME=${HOROVOD_NCCL_HOME:-} (torch CUDA $cuda)"
fi

run "$PY" -m pip uninstall -y -q horovod 2>/dev/null || true
run "$PY" -m pip download --no-deps --no-binary :all: horovod==0.28.1 -d "$work" -q
if [ -n "${DRY_RUN:-}" ]; then
  echo "+ (patch CMAKE_CXX_STANDARD 14 -> 17) pip install --no-build-isolation --no-deps horovod-0.28.1"
  echo "+ record '$want' in horovod/.hepscan-built-against"
  exit 0
fi
tar -xzf "$work"/horovod-0.28.1.tar.gz -C "$work"
src="$work/horovod-0.28.1"
sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 17)/' \
  "$src/CMakeLists.txt" "$src/horovod/torch/CMakeLists.txt"
grep -q 'CMAKE_CXX_STANDARD 17' "$src/horovod/torch/CMakeLists.txt"
"$PY" -m pip install --no-build-isolation --no-deps "$src"
"$PY" -m pip install "cloudpickle" "psutil" "pyyaml" "packaging" >/dev/null
"$PY" - <<EOF
import os
import horovod
import horovod.torch as hvd
hvd.init()
if "$GPU" == "NCCL" and not hvd.nccl_built():
    raise SystemExit("horovod built without NCCL: see the CMake output above")
print("horovod", hvd.size(), "rank(s) ok; NCCL:", bool(hvd.nccl_built()))
open(os.path.join(os.path.dirname(horovod.__file__), ".hepscan-built-against"), "w").write("$want\n")
EOF
