"""Build djinn._C: the C core (compiled as C11) plus the thin C++ layer over libtorch.

The C sources are compiled here with the C compiler and C flags before torch's
BuildExtension wraps the compiler for the C++ sources, then linked in as objects.
"""
import glob
import os

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
C_SOURCES = sorted(glob.glob("csrc/common/*.c") + glob.glob("csrc/client/*.c"))
# server/policy.cpp: the server's operator policy, so the client refuses at capture what
# the server would refuse (and the fragment is left as it was)
CXX_SOURCES = sorted(glob.glob("csrc/torch/*.cpp")) + ["server/policy.cpp"]
INCLUDES = [os.path.join(ROOT, d) for d in ("csrc/common", "csrc/client", "csrc/torch", "server")]
LIBS = ["zmq", "msgpackc", "xxhash"]


def _extra_dirs(var):
    return [p for p in os.environ.get(var, "").split(":") if p]


class Build(BuildExtension):
    def build_extensions(self):
        cflags = ["-std=gnu11", "-O2", "-fPIC", "-Wall", "-Wextra", "-fvisibility=hidden"]
        incs = INCLUDES + _extra_dirs("CPATH")
        objs = self.compiler.compile(C_SOURCES, output_dir=self.build_temp, include_dirs=incs,
                                     extra_postargs=cflags)
        for ext in self.extensions:
            ext.extra_objects = list(objs) + ext.extra_objects
        super().build_extensions()


# `make` builds the extension in place with `setup.py build_ext --inplace` and then
# registers the package with `pip install --no-build-isolation -e .`; DJINN_SKIP_EXT=1
# keeps that second step from compiling everything again.
EXT_MODULES = [] if os.environ.get("DJINN_SKIP_EXT") == "1" else None

setup(
    packages=["djinn", "djinn.bin"],  # djinn/bin holds only the server binary
    package_data={"djinn.bin": ["djinn-server"]},
    # `djinn-server` on PATH: a launcher that execs the binary in the package (deploy/wheel)
    scripts=["deploy/wheel/djinn-server"],
    ext_modules=EXT_MODULES if EXT_MODULES is not None else [
        CppExtension(
            "djinn._C",
            CXX_SOURCES,
            include_dirs=INCLUDES,
            depends=C_SOURCES + sorted(glob.glob("csrc/*/*.h")),
            libraries=LIBS,
            library_dirs=_extra_dirs("LIBRARY_PATH"),
            extra_compile_args={"cxx": ["-O2", "-Wall", "-Wno-unused-parameter"]},
        )
    ],
    cmdclass={"build_ext": Build.with_options(use_ninja=False)},
)
