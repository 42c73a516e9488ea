"""Explicit SIMD vectors for Numba kernels: a register's worth of floats held as one value.

LLVM vectorises a loop over arrays by itself, but a sum that must live across several nested
loops (the direct convolution's: over every input channel and the nine taps of the kernel)
stays in memory, and each multiply-add then loads and stores it. With a vector type the kernel
holds such sums as local variables, which LLVM keeps in registers. A vector is VECTOR_BYTES
wide (64 with AVX-512, else 32): ``lanes_of(a)`` floats of a's dtype (16 float32 or 8 float64
with AVX-512). Four operations:

    load(a, i)       a[i:i + lanes] as a vector; a is 1-D and contiguous, and i + lanes <= a.size
                     (not checked in compiled code: the caller keeps its reads inside a)
    store(a, i, v)   a[i:i + lanes] = v
    splat(s)         a vector of lanes copies of the float s
    fma(a, b, c)     a * b + c in each lane, rounded once (LLVM's llvm.fma on the vector type)

Each is a plain Python function on NumPy arrays, which is what runs under NUMBA_DISABLE_JIT=1 and
what tests compare the compiled code with, and an overload that compiled code takes instead: a
Numba type lowered to LLVM's <lanes x float>, and one instruction each.
"""
import llvmlite.binding as llvm
import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.codegen import get_host_cpu_features
from numba.extending import intrinsic, models, overload, register_model

from nanotorch.kernels.optim import fma_reference


def _vector_bytes():
    """64 where the code is compiled for AVX-512 (32 registers of 64 bytes), else 32 (AVX2's 16 of
    32 bytes: wider vectors would be split in two and the kernels' sums would no longer fit). The
    features are the host's, or NUMBA_CPU_FEATURES when set, as Numba compiles for (which also
    drops the AVX ones under NUMBA_ENABLE_AVX=0)."""
    features = numba.config.CPU_FEATURES
    if features is None:
        llvm.initialize_native_target()
        features = get_host_cpu_features()
    return 64 if "+avx512f" in features.split(",") else 32


VECTOR_BYTES = _vector_bytes()


def lanes_of(a):
    """How many of a's elements one vector holds."""
    return VECTOR_BYTES // a.itemsize


def load(a, i):
    return a[i:i + lanes_of(a)].copy()


def store(a, i, v):
    a[i:i + lanes_of(a)] = v


def splat(s):
    return np.full(lanes_of(s), s)


def fma(a, b, c):
    return fma_reference(a, b, c)


class Vector(types.Type):
    """Numba's type for a vector of ``dtype`` (float32 or float64)."""

    def __init__(self, dtype):
        self.dtype = dtype
        self.lanes = VECTOR_BYTES // (dtype.bitwidth // 8)
        super().__init__(name=f"Vector({dtype} x {self.lanes})")


@register_model(Vector)
class _VectorModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, ir.VectorType(dmm.lookup(fe_type.dtype).get_value_type(), fe_type.lanes))


def _is_float_row(a):
    return isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C" and isinstance(a.dtype, types.Float)


def _element_pointer(context, builder, sig, args):
    """A pointer to a[i], for (a, i, ...) = args: the row's data pointer plus i."""
    row = context.make_array(sig.args[0])(context, builder, args[0])
    return builder.gep(row.data, [context.cast(builder, args[1], sig.args[1], types.intp)])


@intrinsic
def _load(typingctx, a, i):
    vector = Vector(a.dtype)

    def codegen(context, builder, sig, args):
        pointer = builder.bitcast(_element_pointer(context, builder, sig, args),
                                  context.get_value_type(vector).as_pointer())
        return builder.load(pointer, align=a.dtype.bitwidth // 8)       # unaligned: any i
    return vector(a, i), codegen


@intrinsic
def _store(typingctx, a, i, v):
    def codegen(context, builder, sig, args):
        pointer = builder.bitcast(_element_pointer(context, builder, sig, args), args[2].type.as_pointer())
        builder.store(args[2], pointer, align=a.dtype.bitwidth // 8)
        return context.get_dummy_value()
    return types.none(a, i, v), codegen


@intrinsic
def _splat(typingctx, s):
    vector = Vector(s)

    def codegen(context, builder, sig, args):
        vt = context.get_value_type(vector)
        first = builder.insert_element(ir.Constant(vt, ir.Undefined), args[0], ir.Constant(ir.IntType(32), 0))
        return builder.shuffle_vector(first, ir.Constant(vt, ir.Undefined),
                                      ir.Constant(ir.VectorType(ir.IntType(32), vector.lanes), [0] * vector.lanes))
    return vector(s), codegen


@intrinsic
def _fma(typingctx, a, b, c):
    def codegen(context, builder, sig, args):
        vt = args[0].type
        name = f"llvm.fma.v{vt.count}{'f32' if a.dtype == types.float32 else 'f64'}"
        return builder.call(cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt] * 3), name), args)
    return a(a, b, c), codegen


@overload(lanes_of, inline="always")
def _lanes_of_compiled(a):
    if isinstance(a, types.Array) and isinstance(a.dtype, types.Float):
        n = Vector(a.dtype).lanes
        return lambda a: n


@overload(load, inline="always")
def _load_compiled(a, i):
    if _is_float_row(a) and isinstance(i, types.Integer):
        return lambda a, i: _load(a, i)


@overload(store, inline="always")
def _store_compiled(a, i, v):
    if _is_float_row(a) and isinstance(i, types.Integer) and v == Vector(a.dtype):
        return lambda a, i, v: _store(a, i, v)


@overload(splat, inline="always")
def _splat_compiled(s):
    if s in (types.float32, types.float64):
        return lambda s: _splat(s)


@overload(fma, inline="always")
def _fma_compiled(a, b, c):
    if isinstance(a, Vector) and a == b == c:
        return lambda a, b, c: _fma(a, b, c)
