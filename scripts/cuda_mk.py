"""Print the Makefile lines that turn on the server's CUDA half (issue 15).

`make` appends them to build/torch.mk. With a CUDA build of torch whose CUDA headers and
runtime library can be found (CUDA_HOME, nvcc on PATH, /usr/local/cuda, or the
nvidia-*-cu* wheels torch depends on), the server is compiled with -DDJN_CUDA and
linked with the CUDA runtime: djn_dev_cuda.c and the pluggable allocator in executor.cpp.
Otherwise both lines are empty and the server is the CPU one. Nothing here needs a GPU.
"""

import glob
import os
import sys

import torch
import torch.utils.cpp_extension as ext


def main():
    lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    cuda = torch.version.cuda is not None and os.path.exists(os.path.join(lib, "libtorch_cuda.so"))
    flags = libs = ""
    if cuda:
        homes = [h for h in (ext.CUDA_HOME, "/usr/local/cuda") if h]
        site = os.path.dirname(os.path.dirname(torch.__file__))
        incs = [os.path.join(h, "include") for h in homes] + glob.glob(
            os.path.join(site, "nvidia", "*", "include")
        )
        inc = next((d for d in incs if os.path.exists(os.path.join(d, "cuda_runtime_api.h"))), None)
        rts = [
            f for h in homes for f in sorted(glob.glob(os.path.join(h, "lib64", "libcudart.so*")))
        ]
        rts += sorted(glob.glob(os.path.join(site, "nvidia", "*", "lib", "libcudart.so*")))
        if inc and rts:
            rt = rts[0]
            d = os.path.dirname(rt)
            flags = f"-DDJN_CUDA=1 -isystem {inc}"
            libs = f"-L{d} -Wl,-rpath,{d} -l:{os.path.basename(rt)} -lc10_cuda"
        else:
            print(
                "note: CUDA torch without CUDA headers or runtime found: the server's CUDA "
                "VMU is not built (set CUDA_HOME)",
                file=sys.stderr,
            )
    print("DJN_CUDA_FLAGS := " + flags)
    print("DJN_CUDA_LIB := " + libs)


if __name__ == "__main__":
    main()
