"""Builds the optional compiled Avro codec (schemas/_avro.pyx); everything else is in pyproject.toml.

Optional: without a C compiler the install still succeeds and atpflow runs on fastavro and
the pure-Python encoder (slower; `atpflow run` logs which codec it uses).
"""

from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    ext_modules=cythonize(
        [Extension("schemas._avro", ["schemas/_avro.pyx"], optional=True)],
        compiler_directives={"language_level": "3"},
        quiet=True,
    ),
)
