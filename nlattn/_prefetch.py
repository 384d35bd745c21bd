"""Software prefetch of array rows, for kernels whose reads are random (k-NN graphs, leaves).

A prefetch is a hint to the processor to start loading a cache line early; it never changes a
result.  Kernels that know which rows they will read a little later (the keys of a batch of
candidates, the members of the next leaf) issue it a few rows ahead, so that the memory
latency of one row overlaps the work on others.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def prefetch_row(typingctx, array, row):
    """Prefetch the cache lines of row ``row`` of a C-contiguous 2-D array (a hint, no effect
    on results)."""
    if not (isinstance(array, types.Array) and array.ndim == 2 and array.layout == "C"
            and isinstance(row, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        array_type, row_type = signature.args
        ary = context.make_array(array_type)(context, builder, args[0])
        index = context.cast(builder, args[1], row_type, types.intp)
        zero = context.get_constant(types.intp, 0)
        first = cgutils.get_item_pointer(context, builder, array_type, ary, [index, zero],
                                         wraparound=False, boundscheck=False)
        byte_ptr = ir.IntType(8).as_pointer()
        first = builder.bitcast(first, byte_ptr)
        n_cols = cgutils.unpack_tuple(builder, ary.shape, 2)[1]
        item = context.get_constant(types.intp, context.get_abi_sizeof(
            context.get_data_type(array_type.dtype)))
        last_offset = builder.sub(builder.mul(n_cols, item), context.get_constant(types.intp, 1))
        line = context.get_constant(types.intp, 64)
        mid_offset = builder.select(builder.icmp_signed("<", line, last_offset), line,
                                    last_offset)
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [byte_ptr, i32, i32, i32])
        # the typed-pointer name of LLVM 14; newer LLVMs remangle it to "llvm.prefetch.p0"
        prefetch = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8")
        for ptr in (first, builder.gep(first, [mid_offset]), builder.gep(first, [last_offset])):
            builder.call(prefetch, [ptr, i32(0), i32(3), i32(1)])  # read, keep, data cache
        return context.get_dummy_value()

    return types.void(array, row), codegen


__all__ = ["prefetch_row"]
