from setuptools import Extension, setup

# Metadata and packaging live in pyproject.toml; this file only declares the optional native
# kernels (a compiler-less install falls back to fz_trio.datapath._pykernels). Their C source is
# part of the sdist (as an extension source) but must not be installed as package data.
setup(
    ext_modules=[
        Extension(
            "fz_trio.datapath._kernels",
            ["fz_trio/datapath/_kernels.c"],
            optional=True,
            extra_compile_args=["-O2"],
        )
    ],
    exclude_package_data={"fz_trio.datapath": ["*.c"]},
)
