"""Builds the optional compiled parts; everything else is in pyproject.toml.

- schemas/_avro.pyx: the Avro codec of the hot path;
- operators/_sort.pyx, _order.pyx and _project.pyx: compiled twins of the decode-and-sort,
  order and project steps' common case (the Python units stay the reference; tests run both);
  operators/_hashes.pxd and schemas/_avro.pxd hold what they share;
- schemas/_writer.pxd: the Avro primitives the compiled writers share;
- sinks/_kafka.pyx: the per-record loops of the Kafka source and sink (reading, routing,
  queueing, metric figures).

Optional: without a C compiler the install still succeeds and atpflow runs on fastavro and
the pure-Python code (slower; `atpflow run` logs which codec it uses).
"""

from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    ext_modules=cythonize(
        [
            Extension(name, [name.replace(".", "/") + ".pyx"], optional=True)
            for name in (
                "schemas._avro", "operators._sort", "operators._order", "operators._project",
                "sinks._kafka",
            )
        ],
        compiler_directives={"language_level": "3"},
        quiet=True,
    ),
)
