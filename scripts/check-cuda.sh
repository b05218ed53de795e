#!/usr/bin/env bash
# make check-cuda: build djinn-server and djinn._C against the CUDA build of torch.
#
# This machine has no GPU, but everything links against libtorch_cuda: the CUDA wheel of
# torch==$TORCH_VERSION (PyPI's default build, ~530 MB) goes into its own environment
# (.venv-cuda, --no-deps: its CUDA runtime packages are not needed to compile), and the
# same sources `make build` compiles are compiled and linked against it into build/cuda/.
# `import torch` from that wheel needs the CUDA runtime, so nothing here imports it: the
# include and library paths are taken from the installed files. Not part of `make test`
# or CI (the download is too large); run it before changing anything CUDA-facing.
# Another torch (the GPU machine's 2.11) in its own environment and build folder:
#   TORCH_VERSION=2.11.0 VENV=.venv-cuda211 OUT=build/cuda211 ./scripts/check-cuda.sh
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=${TORCH_VERSION:-2.13.0}
VENV=${VENV:-.venv-cuda}
OUT=${OUT:-build/cuda}
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
PY=python3.11
command -v $PY >/dev/null || PY=python3

if [ ! -x $VENV/bin/python ]; then
    $PY -m venv $VENV
fi
SITE=$($VENV/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
TORCH=$SITE/torch
if [ ! -f "$TORCH/lib/libtorch_cuda.so" ]; then
    echo "== installing the CUDA build of torch==$TORCH_VERSION into $VENV (--no-deps)"
    # --isolated: this machine's pip configuration points at the local CPU wheel
    $VENV/bin/pip install --isolated -q --no-deps --index-url https://pypi.org/simple \
        --cert /etc/ssl/certs/ca-certificates.crt "torch==$TORCH_VERSION"
fi
test -f "$TORCH/lib/libtorch_cuda.so" || { echo "no libtorch_cuda.so in $TORCH: not a CUDA build"; exit 1; }
CUDA_VER=$(sed -n "s/^cuda: Optional\[str\] = '\(.*\)'/\1/p" "$TORCH/version.py")
echo "== torch $(sed -n "s/^__version__ = '\(.*\)'/\1/p" "$TORCH/version.py") (CUDA $CUDA_VER), toolkit $CUDA_HOME"

INC="-isystem $TORCH/include -isystem $TORCH/include/torch/csrc/api/include -isystem $CUDA_HOME/include"
# DJN_CUDA: the server's CUDA half (djn_dev_cuda.c, the pluggable allocator in executor.cpp)
CXXFLAGS="-std=c++20 -O1 -g -fPIC -Wall -Wno-unused-parameter -Werror -DDJN_CUDA=1"
CFLAGS="-std=gnu11 -O1 -g -fPIC -Wall -Wextra -Werror -DDJN_CUDA=1 -isystem $CUDA_HOME/include \
-Icsrc/common -Icsrc/client -Iserver"
# libtorch_cuda's own CUDA dependencies (cuBLAS, cuDNN, NCCL...) come with the runtime
# packages we did not install: the link resolves our symbols, not theirs
LIBS="-L$TORCH/lib -Wl,-rpath,$TORCH/lib -Wl,--no-as-needed -ltorch_cuda -lc10_cuda -ltorch \
-ltorch_cpu -lc10 -Wl,--as-needed -Wl,--allow-shlib-undefined -L$CUDA_HOME/lib64 -lcudart"
mkdir -p $OUT/obj

objs=()
for src in server/*.c csrc/common/*.c csrc/client/djn_transport.c; do
    o=$OUT/obj/$(basename "${src%.c}").o
    cc $CFLAGS -c "$src" -o "$o"
    objs+=("$o")
done
for src in server/*.cpp; do
    o=$OUT/obj/$(basename "${src%.cpp}").o
    c++ $CXXFLAGS -Icsrc/common -Iserver $INC -c "$src" -o "$o"
    objs+=("$o")
done
c++ -o $OUT/djinn-server "${objs[@]}" $LIBS -lzmq -lmsgpackc -lxxhash -lpthread
echo "== $OUT/djinn-server"
# the CUDA half is really in it: the seam on the runtime API, the pluggable allocator
syms=$(nm -C $OUT/djinn-server)
for sym in djn_dev_cuda_new cudaMalloc cudaStreamWaitEvent cudaGraphLaunch \
    'CUDAPluggableAllocator::changeCurrentAllocator'; do
    grep -q "$sym" <<<"$syms" || { echo "djinn-server lacks $sym"; exit 1; }
done

# the device VMU as a torch.cuda.memory.CUDAPluggableAllocator library (make bench-gpu)
cc $CFLAGS -shared -o $OUT/libdjn_vmu_alloc.so benchmarks/vmu_alloc.c server/djn_dvmu.c \
    server/djn_dev.c server/djn_dev_cuda.c server/djn_heap.c server/djn_slab.c \
    csrc/common/djn_mem.c csrc/common/djn_map.c -L$CUDA_HOME/lib64 -lcudart -lpthread -Wl,--no-undefined
echo "== $OUT/libdjn_vmu_alloc.so"

# the extension: the C core and the C++ layer, as setup.py builds them
PYINC=$($VENV/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
EXTFLAGS="$CXXFLAGS -fvisibility=hidden -DTORCH_API_INCLUDE_EXTENSION_H -DTORCH_EXTENSION_NAME=_C \
-isystem $PYINC -Icsrc/common -Icsrc/client -Icsrc/torch -Iserver"
eobjs=()
for src in csrc/common/*.c csrc/client/*.c; do
    o=$OUT/obj/ext_$(basename "${src%.c}").o
    cc $CFLAGS -fvisibility=hidden -c "$src" -o "$o"
    eobjs+=("$o")
done
for src in csrc/torch/*.cpp server/policy.cpp; do # setup.py's CXX_SOURCES
    o=$OUT/obj/ext_$(basename "${src%.cpp}").o
    c++ $EXTFLAGS $INC -c "$src" -o "$o"
    eobjs+=("$o")
done
c++ -shared -o $OUT/_C.so "${eobjs[@]}" $LIBS -L"$TORCH/lib" -ltorch_python \
    -lzmq -lmsgpackc -lxxhash -lpthread
echo "== $OUT/_C.so"

# both really link the CUDA half of torch
for f in $OUT/djinn-server $OUT/_C.so; do
    readelf -d "$f" | grep -q 'libtorch_cuda.so' || { echo "$f does not link libtorch_cuda.so"; exit 1; }
done
echo "check-cuda: OK (server, extension and the VMU allocator library built and linked against torch $TORCH_VERSION+cu${CUDA_VER/./})"
