# The reader and the model construction, callable from C by the compiled twins that decode
# (operators/_sort.pyx) without a Python call each.

cpdef dict read_flat(bytes data, list plan)
cpdef object construct(object model, tuple codes, tuple positive, dict fields)
