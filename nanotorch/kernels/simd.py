"""Explicit SIMD vectors for Numba kernels: a register's worth of floats held as one value.

LLVM vectorises a loop over arrays by itself, but a sum that must live across several nested
loops (the direct convolution's: over every input channel and the nine taps of the kernel)
stays in memory, and each multiply-add then loads and stores it. With a vector type the kernel
holds such sums as local variables, which LLVM keeps in registers. A vector is VECTOR_BYTES
wide (64 with AVX-512, else 32): ``lanes_of(a)`` floats of a's dtype (16 float32 or 8 float64
with AVX-512). Its operations:

    load(a, i)       a[i:i + lanes] as a vector; a is 1-D and contiguous, and i + lanes <= a.size
                     (not checked in compiled code: the caller keeps its reads inside a)
    store(a, i, v)   a[i:i + lanes] = v
    splat(s)         a vector of lanes copies of the float s
    fma(a, b, c)     a * b + c in each lane, rounded once (LLVM's llvm.fma on the vector type)
    add(a, b)        a + b in each lane;  sub(a, b): a - b
    minimum(a, b)    a where a < b, else b, lane by lane;  maximum(a, b): a where a > b, else b. For
                     finite values (where a lane holds a NaN b comes out, as from x86's vminps;
                     and LLVM, compiling beside fastmath kernels, may assume there is none)
    interleave(a, b) (lo, hi): the 2 * lanes values a[0], b[0], a[1], b[1], ... split into two
                     vectors (one shuffle each): how winograd.py writes a tile's two output columns
    deinterleave(a, b)  its inverse: (the even-indexed, the odd-indexed) of a's and b's values
    load_first(a, i, n)      a[i:i + n] and zeros, as a vector (0 <= n <= lanes: only those are read)
    store_first(a, i, v, n)  a[i:i + n] = v[:n] (only those are written): rows shorter than a vector.
                     (LLVM's masked load and store; with n = 0 they touch no memory, wherever i points)

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


def add(a, b):
    return a + b


def sub(a, b):
    return a - b


def minimum(a, b):
    return np.where(a < b, a, b)


def maximum(a, b):
    return np.where(a > b, a, b)


def interleave(a, b):
    both = np.empty(2 * a.size, dtype=a.dtype)
    both[0::2], both[1::2] = a, b
    return both[:a.size], both[a.size:]


def deinterleave(a, b):
    both = np.concatenate([a, b])
    return both[0::2].copy(), both[1::2].copy()


def load_first(a, i, n):
    v = np.zeros(lanes_of(a), dtype=a.dtype)
    v[:n] = a[i:i + n]
    return v


def store_first(a, i, v, n):
    a[i:i + n] = v[:n]


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
        return _broadcast(builder, context.get_value_type(vector), args[0])
    return vector(s), codegen


def _broadcast(builder, vt, value):
    """The LLVM vector of type vt with value in every lane (an insert, then a shuffle of lane 0)."""
    first = builder.insert_element(ir.Constant(vt, ir.Undefined), value, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(first, ir.Constant(vt, ir.Undefined),
                                  ir.Constant(ir.VectorType(ir.IntType(32), vt.count), [0] * vt.count))


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


@intrinsic
def _add(typingctx, a, b):
    return a(a, b), lambda context, builder, sig, args: builder.fadd(args[0], args[1])


@intrinsic
def _sub(typingctx, a, b):
    return a(a, b), lambda context, builder, sig, args: builder.fsub(args[0], args[1])


def _pick(order):
    """An intrinsic (a, b) -> a where ``a order b`` holds, else b, lane by lane (one compare, one select)."""
    def pick(typingctx, a, b):
        def codegen(context, builder, sig, args):
            return builder.select(builder.fcmp_ordered(order, args[0], args[1]), args[0], args[1])
        return a(a, b), codegen
    return intrinsic(pick)


_minimum, _maximum = _pick("<"), _pick(">")


def _shuffles(pattern):
    """An intrinsic (a, b) -> two vectors, each one shuffle of the 2 * lanes values of a then b:
    ``pattern(lanes)`` gives the two lists of indices."""
    def shuffles(typingctx, a, b):
        pair = types.UniTuple(a, 2)

        def codegen(context, builder, sig, args):
            indices = pattern(a.lanes)
            picks = [builder.shuffle_vector(args[0], args[1], ir.Constant(ir.VectorType(ir.IntType(32), a.lanes), ix))
                     for ix in indices]
            return context.make_tuple(builder, pair, picks)
        return pair(a, b), codegen
    return intrinsic(shuffles)


_interleave = _shuffles(lambda n: [[i // 2 + (i % 2) * n + h for i in range(n)] for h in (0, n // 2)])
_deinterleave = _shuffles(lambda n: [list(range(0, 2 * n, 2)), list(range(1, 2 * n, 2))])


def _first_lanes(context, builder, vector, n, count_type):
    """The mask <i < n for each lane i> of a vector type."""
    ix = ir.VectorType(ir.IntType(32), vector.lanes)
    n32 = builder.trunc(context.cast(builder, n, count_type, types.int64), ir.IntType(32))
    return builder.icmp_signed("<", ir.Constant(ix, list(range(vector.lanes))), _broadcast(builder, ix, n32))


def _masked(builder, what, vt):
    """LLVM's llvm.masked.load or .store for the vector type vt (the pointer's suffix p0: LLVM's pointers are opaque)."""
    name = f"llvm.masked.{what}.v{vt.count}{'f32' if isinstance(vt.element, ir.FloatType) else 'f64'}.p0"
    mask = ir.VectorType(ir.IntType(1), vt.count)
    fty = (ir.FunctionType(vt, [vt.as_pointer(), ir.IntType(32), mask, vt]) if what == "load" else
           ir.FunctionType(ir.VoidType(), [vt, vt.as_pointer(), ir.IntType(32), mask]))
    return cgutils.get_or_insert_function(builder.module, fty, name)


@intrinsic
def _load_first(typingctx, a, i, n):
    vector = Vector(a.dtype)

    def codegen(context, builder, sig, args):
        vt = context.get_value_type(vector)
        pointer = builder.bitcast(_element_pointer(context, builder, sig, args), vt.as_pointer())
        mask = _first_lanes(context, builder, vector, args[2], sig.args[2])
        return builder.call(_masked(builder, "load", vt), [pointer, ir.Constant(ir.IntType(32), a.dtype.bitwidth // 8),
                                                          mask, ir.Constant(vt, None)])
    return vector(a, i, n), codegen


@intrinsic
def _store_first(typingctx, a, i, v, n):
    def codegen(context, builder, sig, args):
        vt = args[2].type
        pointer = builder.bitcast(_element_pointer(context, builder, sig, args), vt.as_pointer())
        mask = _first_lanes(context, builder, sig.args[2], args[3], sig.args[3])
        builder.call(_masked(builder, "store", vt), [args[2], pointer, ir.Constant(ir.IntType(32), a.dtype.bitwidth // 8),
                                                     mask])
        return context.get_dummy_value()
    return types.none(a, i, v, n), codegen


def _on_two_vectors(function, compiled):
    """Compiled code takes the intrinsic ``compiled`` for ``function`` on two vectors of one type."""
    @overload(function, inline="always")
    def _typed(a, b):
        if isinstance(a, Vector) and a == b:
            return lambda a, b: compiled(a, b)


for _function, _compiled in ((add, _add), (sub, _sub), (minimum, _minimum), (maximum, _maximum),
                             (interleave, _interleave), (deinterleave, _deinterleave)):
    _on_two_vectors(_function, _compiled)


@overload(load_first, inline="always")
def _load_first_compiled(a, i, n):
    if _is_float_row(a) and isinstance(i, types.Integer) and isinstance(n, types.Integer):
        return lambda a, i, n: _load_first(a, i, n)


@overload(store_first, inline="always")
def _store_first_compiled(a, i, v, n):
    if _is_float_row(a) and isinstance(i, types.Integer) and v == Vector(a.dtype) and isinstance(n, types.Integer):
        return lambda a, i, v, n: _store_first(a, i, v, n)
