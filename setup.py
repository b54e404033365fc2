"""Builds the optional compiled parts; everything else is in pyproject.toml.

- schemas/_avro.pyx: the Avro codec of the hot path;
- operators/_order.pyx and operators/_project.pyx: compiled twins of the order and project
  steps' common case (the Python units stay the reference; tests run both);
- sinks/_kafka.pyx: the Kafka sink's per-record loops (routing, queueing, metric figures).

Optional: without a C compiler the install still succeeds and atpflow runs on fastavro and
the pure-Python code (slower; `atpflow run` logs which codec it uses).
"""

from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    ext_modules=cythonize(
        [
            Extension(name, [name.replace(".", "/") + ".pyx"], optional=True)
            for name in ("schemas._avro", "operators._order", "operators._project",
                         "sinks._kafka")
        ],
        compiler_directives={"language_level": "3"},
        quiet=True,
    ),
)
