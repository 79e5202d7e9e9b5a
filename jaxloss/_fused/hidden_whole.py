"""``hidden_whole(w)``: ``w`` itself, laid out with its hidden axis whole on every device.

With arrays placed with ``NamedSharding`` and no mesh set, a jitted function cannot see
their layout while tracing: only XLA's partitioner, at compile time, knows that ``w`` is
FSDP-sharded (hidden axis split). The fused losses read ``w`` in two passes, and left to
the partitioner such a ``w`` is gathered once for the first pass and each vocabulary
slice of it again in the second. ``hidden_whole`` is an identity whose partitioning
rule (``custom_partitioning``, which runs at compile time) asks for the hidden axis
whole and keeps the vocabulary axis as it is. Its result's hidden axis is a factor of
its own, so the split does not propagate past it: both passes read one gathered copy,
as the unfused loss reads one. For any other layout it does nothing.

``jax.export`` cannot serialize ``custom_partitioning``'s compile-time callback, so an
exported program lowers the identity as it is (and the partitioner decides, as without
it). Under ``vmap`` it is the identity too, and so it is wherever JAX does not give the
lowering the devices (``custom_partitioning`` needs them).
"""

from __future__ import annotations

import jax
from jax.experimental.custom_partitioning import custom_partitioning
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir


def _whole(sharding):
    """``sharding`` with the hidden axis whole (a sharding without a spec as it is)."""
    if not isinstance(sharding, jax.sharding.NamedSharding):
        return sharding
    vocab = sharding.spec[1] if len(sharding.spec) > 1 else None
    return jax.sharding.NamedSharding(sharding.mesh, jax.P(None, vocab))


def _partition(mesh, arg_shapes, result_shape):
    whole = _whole(arg_shapes[0].sharding)
    return mesh, lambda w: w, whole, (whole,)


@custom_partitioning
def _gathered(w):
    return w


_gathered.def_partition(
    _partition,
    infer_sharding_from_operands=lambda mesh, arg_shapes, shape: _whole(arg_shapes[0].sharding),
    # "k", not "h": the result's hidden axis takes no sharding from the operand's.
    sharding_rule="h v -> k v",
    need_replication_factors=("h",),
)

# A primitive around it so that its lowering can see whether the program is exported.
hidden_whole_p = Primitive("jaxloss_hidden_whole")
hidden_whole_p.def_impl(lambda w: w)
hidden_whole_p.def_abstract_eval(lambda w: w)
ad.defjvp(hidden_whole_p, lambda dw, w: dw)
batching.primitive_batchers[hidden_whole_p] = lambda args, dims: (args[0], dims[0])


try:  # a private registry: JAX gives the lowering the devices only for these primitives
    from jax._src import dispatch

    dispatch.prim_requires_devices_during_lowering.add(hidden_whole_p)
except (ImportError, AttributeError):  # then lowered as the identity
    pass


def _lowering(ctx, w):
    context = ctx.module_context
    devices = getattr(context.axis_context, "device_assignment", None)
    exported = getattr(getattr(context, "lowering_parameters", None), "for_export", True)
    if exported or not devices or len(devices) == 1:
        return [w]
    return mlir.lower_fun(_gathered, multiple_results=False)(ctx, w)


mlir.register_lowering(hidden_whole_p, _lowering)


def hidden_whole(w: jax.Array) -> jax.Array:
    """``w`` ``[H, V]``, gathered along ``H`` where it is split (see the module)."""
    return hidden_whole_p.bind(w)
