"""How the fused losses walk their tokens and their vocabulary.

Tokens: ``n`` rows are padded to ``count * size`` and viewed as ``count`` chunks of
``size`` rows (``Chunks``). VocabChunks: the vocabulary axis of ``w`` (and of anything
indexed by the vocabulary) is walked in slices of ``width`` columns (``VocabChunks``).

On one device chunks and slices are contiguous. Wherever an axis may be split over
devices they are interleaved: chunk ``i`` holds rows ``i, i + count, ...`` and slice
``j`` columns ``j, j + count, ...``. A device's contiguous block of rows (or columns)
then gives a block of every chunk (slice), so that walking them moves nothing between
devices: a contiguous chunk of sharded rows would live on one device, and a loop over
such chunks makes the partitioner gather every row to every device.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxloss._reduce import explicit_sharding


def spread_over_devices(a) -> bool:
    """Whether ``a`` may be split over devices: under explicit sharding, or with more
    than one device unless inside a ``shard_map`` that is manual over every mesh axis
    (there each device runs the loss on its own block)."""
    if explicit_sharding(a) is not None:
        return True
    axis_types = getattr(jax.sharding.get_abstract_mesh(), "axis_types", ())
    if axis_types and all(t == jax.sharding.AxisType.Manual for t in axis_types):
        return False
    return jax.device_count() > 1


def loop_variant(a, i):
    """``a``, tied to the loop index ``i`` so that XLA does not hoist work on it out of
    the loop.

    XLA's CPU backend slices 16-bit floats in float32: without the tie it converts the
    whole loop-invariant array (``w``, or ``x``) once, before the loop, into a float32
    copy twice its size; with it the conversion is fused into the slice and touches only
    the slice. Other backends slice 16-bit floats natively; there the tie costs nothing.
    """
    return jax.lax.optimization_barrier((a, i))[0]


def _spec(sharding, ndim: int) -> tuple:
    return (*sharding.spec, *(None,) * (ndim - len(sharding.spec)))


def _named(sharding, *spec):
    return jax.sharding.NamedSharding(sharding.mesh, jax.P(*spec))


@dataclasses.dataclass(frozen=True)
class Chunks:
    """``count`` chunks of ``size`` rows along axis 0 (after ``pad``)."""

    count: int
    size: int
    interleaved: bool

    @classmethod
    def of(cls, n: int, size: int, interleaved: bool) -> Chunks:
        return cls(max(1, -(-n // size)), size, interleaved)

    @property
    def rows(self) -> int:
        return self.count * self.size

    @property
    def axis(self) -> int:
        """The axis of a viewed array that numbers the chunks."""
        return 1 if self.interleaved else 0

    def pad(self, a):
        """``a`` with zero rows appended up to ``rows``."""
        extra = self.rows - a.shape[0]
        if extra == 0:
            return a
        return jnp.pad(a, ((0, extra), *((0, 0),) * (a.ndim - 1)))

    def view(self, a):
        """``[rows, ...]`` as ``[count, size, ...]`` (contiguous) or ``[size, count, ...]``
        (interleaved), without a copy; under explicit sharding the rows' sharding stays
        on the axis within a chunk."""
        lead = (self.size, self.count) if self.interleaved else (self.count, self.size)
        sharding = explicit_sharding(a)
        if sharding is None:
            return a.reshape(*lead, *a.shape[1:])
        spec = _spec(sharding, a.ndim)
        within = (spec[0], None) if self.interleaved else (None, spec[0])
        out = _named(sharding, *within, *spec[1:])
        return jax.lax.reshape(a, (*lead, *a.shape[1:]), out_sharding=out)

    def unview(self, a, n: int | None = None):
        """Inverse of ``view``, keeping the first ``n`` rows (all by default)."""
        shape = (self.rows, *a.shape[2:])
        sharding = explicit_sharding(a)
        if sharding is None:
            rows = a.reshape(shape)
        else:
            spec = _spec(sharding, a.ndim)
            within = spec[0] if self.interleaved else spec[1]
            rows = jax.lax.reshape(a, shape, out_sharding=_named(sharding, within, *spec[2:]))
        return rows if n is None else rows[:n]

    def take(self, viewed, i):
        """Chunk ``i`` of a viewed array, read in place."""
        return jax.lax.dynamic_index_in_dim(loop_variant(viewed, i), i, self.axis, keepdims=False)

    def put(self, viewed, i, value):
        """``viewed`` with chunk ``i`` replaced by ``value`` (in place)."""
        value = value.astype(viewed.dtype)
        sharding = explicit_sharding(viewed)
        if sharding is not None:
            # The value takes the chunk's sharding, as its rows do.
            spec = _spec(sharding, viewed.ndim)
            within = spec[0] if self.interleaved else spec[1]
            value = jax.sharding.reshard(value, _named(sharding, within, *spec[2:]))
        return jax.lax.dynamic_update_index_in_dim(viewed, value, i, self.axis)

    def buffer(self, like, dtype, width: int | None = None):
        """A viewed array of zeros with ``like``'s rows (``[rows]``, or ``[rows, width]``),
        sharded like them."""
        zeros = jnp.zeros_like(like, dtype=dtype)
        if width is not None:
            zeros = zeros[:, None] * jnp.zeros((width,), dtype)
        return self.view(zeros)

    def stack(self, a):
        """``[rows, ...]`` as ``[count, size, ...]`` whatever the layout (for ``lax.scan``)."""
        return jnp.moveaxis(self.view(a), self.axis, 0)

    def unstack(self, a, n: int):
        """Inverse of ``stack``, keeping the first ``n`` rows."""
        return self.unview(jnp.moveaxis(a, 0, self.axis), n)


@dataclasses.dataclass(frozen=True)
class VocabChunks:
    """The vocabulary in ``count`` chunks of ``size`` columns (``vocab_chunk_size``), then
    a ``tail`` chunk of the remaining columns (contiguous chunks only: interleaved
    chunks divide it)."""

    vocab: int
    size: int
    interleaved: bool

    @property
    def count(self) -> int:
        return self.vocab // self.size

    @property
    def tail(self) -> int:
        return self.vocab % self.size

    def view(self, a):
        """``[..., V]`` as walked: unchanged (contiguous) or ``[..., size, count]``."""
        if not self.interleaved:
            return a
        shape = (*a.shape[:-1], self.size, self.count)
        sharding = explicit_sharding(a)
        if sharding is None:
            return a.reshape(shape)
        spec = _spec(sharding, a.ndim)
        return jax.lax.reshape(a, shape, out_sharding=_named(sharding, *spec, None))

    def unview(self, a):
        """Inverse of ``view``."""
        if not self.interleaved:
            return a
        shape = (*a.shape[:-2], self.vocab)
        sharding = explicit_sharding(a)
        if sharding is None:
            return a.reshape(shape)
        spec = _spec(sharding, a.ndim)
        return jax.lax.reshape(a, shape, out_sharding=_named(sharding, *spec[:-1]))


@dataclasses.dataclass(frozen=True)
class VocabChunk:
    """Chunk ``j`` of ``layout`` (``j`` traced), ``size`` columns wide (``layout.size``, or
    its tail)."""

    layout: VocabChunks
    j: jax.Array
    size: int

    @property
    def start(self):
        return self.j * self.layout.size

    def ids(self) -> jax.Array:
        """The vocabulary ids of the chunk's columns, ``[size]`` int32."""
        k = jnp.arange(self.size, dtype=jnp.int32)
        if self.layout.interleaved:
            return k * self.layout.count + self.j
        return k + self.start

    def take(self, viewed):
        """The chunk's columns of an array viewed by ``layout.view`` (last axis)."""
        if self.layout.interleaved:
            return jax.lax.dynamic_index_in_dim(viewed, self.j, viewed.ndim - 1, keepdims=False)
        return jax.lax.dynamic_slice_in_dim(viewed, self.start, self.size, axis=viewed.ndim - 1)

    def put(self, viewed, value):
        """``viewed`` with the chunk's columns replaced by ``value``."""
        if self.layout.interleaved:
            return jax.lax.dynamic_update_index_in_dim(viewed, value, self.j, viewed.ndim - 1)
        return jax.lax.dynamic_update_slice_in_dim(viewed, value, self.start, viewed.ndim - 1)

    def position(self, ids):
        """Where vocabulary ids fall in the chunk: ``(index, inside)``."""
        if self.layout.interleaved:
            return ids // self.layout.count, ids % self.layout.count == self.j
        index = ids - self.start
        return index, (index >= 0) & (index < self.size)
