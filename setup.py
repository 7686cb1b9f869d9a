"""Only the C extension lives here; everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(ext_modules=[
    # optional: without a C compiler the install still succeeds and the prepare stage uses
    # the pinned Rust tokenizer instead (slower; `peftflow doctor` says which one is in use).
    Extension("peftflow.dataset._worldtok", ["peftflow/dataset/_worldtok.c"],
              extra_compile_args=["-O3", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                                  "-Wno-missing-field-initializers", "-Wno-cast-function-type"],
              optional=True),
])
