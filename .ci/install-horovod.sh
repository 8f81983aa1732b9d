#!/usr/bin/env bash
# Builds Horovod 0.28.1 (its last release) against the installed torch.
# As published it asks for C++14, which torch >= 2.1 headers reject; the sdist builds once the
# standard is raised to 17. Idempotent: does nothing when horovod.torch already imports.
set -euo pipefail
PY=${PYTHON:-python}
if "$PY" -c "import horovod.torch" >/dev/null 2>&1; then
  echo "horovod already built: $("$PY" -c 'import horovod; print(horovod.__version__)')"
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PY" -m pip download --no-deps --no-binary :all: horovod==0.28.1 -d "$work" >/dev/null
tar -xzf "$work"/horovod-0.28.1.tar.gz -C "$work"
src="$work/horovod-0.28.1"
sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 17)/' \
  "$src/CMakeLists.txt" "$src/horovod/torch/CMakeLists.txt"
grep -q 'CMAKE_CXX_STANDARD 17' "$src/horovod/torch/CMakeLists.txt"
export CMAKE_POLICY_VERSION_MINIMUM=3.5 HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 \
  HOROVOD_WITHOUT_MPI=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1
export MAKEFLAGS="-j$(nproc)"
"$PY" -m pip install --no-build-isolation --no-deps "$src"
"$PY" -m pip install "cloudpickle" "psutil" "pyyaml" "packaging" >/dev/null
"$PY" -c "import horovod.torch as hvd; hvd.init(); print('horovod', hvd.size(), 'rank(s) ok')"
