"""benchmarks/measure.py: what the benchmarks, tests and examples measure."""

import jax
import jax.numpy as jnp
import pytest

from benchmarks import measure

# A compiled program's text, cut down to what the count reads: an all-gather in the entry
# computation, a loop of 3 trips whose body all-reduces and runs a loop of 5 trips that
# all-reduces a pair (an asynchronous start), and a reduction computation.
HLO = """HloModule m, entry_computation_layout={(f32[4,8]{1,0})->f32[4,8]{1,0}}

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %s = f32[] add(f32[] %a, f32[] %b)
}

%inner (p: (s32[], f32[2], f32[3])) -> (s32[], f32[2], f32[3]) {
  %ars = (f32[2]{0}, f32[3]{0}) all-reduce-start(f32[2]{0} %u, f32[3]{0} %v), to_apply=%add
}

%outer (p: (s32[], f32[4,8])) -> (s32[], f32[4,8]) {
  %ar = f32[4,8]{1,0} all-reduce(f32[4,8]{1,0} %x), channel_id=1, to_apply=%add
  %w = s32[] while(%t), condition=%c, body=%inner, backend_config={"known_trip_count":{"n":"5"}}
}

ENTRY %main (x: f32[4,8]) -> f32[4,8] {
  %ag = f32[16]{0} all-gather(f32[4]{0} %y), dimensions={0}
  %loop = s32[] while(%t), condition=%c, body=%outer, backend_config={"known_trip_count":{"n":"3"}}
}
"""


def test_collectives_count_their_elements_times_the_trips_of_the_loops_around_them():
    assert measure.collective_elements(HLO) == {
        "all-gather": 16,
        "all-reduce": 3 * 32 + 3 * 5 * (2 + 3),
    }


def test_a_loop_without_a_known_trip_count_is_an_error_not_a_guess():
    hlo = HLO.replace('"known_trip_count":{"n":"5"}', "")
    with pytest.raises(ValueError, match="no known trip count"):
        measure.collective_elements(hlo)


def test_a_program_without_collectives_moves_nothing():
    compiled = jax.jit(lambda x: jnp.sum(x * 2)).lower(jnp.ones((4, 8))).compile()
    assert measure.collective_elements(compiled.as_text()) == {}


def test_matmuls_are_counted_once_each_also_inside_loops_and_transforms():
    def f(x, w):
        y = jax.lax.fori_loop(0, 4, lambda i, y: y @ w, x)
        return jnp.sum(jax.checkpoint(lambda y: y @ w)(y))

    x, w = jnp.ones((2, 3)), jnp.ones((3, 3))
    assert measure.count_matmuls(f, x, w) == 2
    assert measure.count_matmuls(jax.grad(f, argnums=1), x, w) == 6


def test_compiled_temp_bytes_grow_with_the_temporaries_a_program_keeps():
    x = jax.ShapeDtypeStruct((256, 256), jnp.float32)
    small = measure.compiled_temp_bytes(lambda x: jnp.sum(x), x)
    large = measure.compiled_temp_bytes(lambda x: jnp.sum(jnp.sort(x @ x, axis=0) @ x), x)
    assert 0 <= small < large


@pytest.mark.parametrize(
    "seconds, shown",
    [
        (0.0, "0.00 µs"),
        (4.2e-6, "4.20 µs"),
        (0.000999, "999 µs"),
        (0.0012, "1.20 ms"),
        (0.0456, "45.6 ms"),
        (0.2421, "242 ms"),
        (1.0, "1.00 s"),
        (456.7, "457 s"),
    ],
)
def test_times_are_shown_with_a_unit_that_keeps_three_digits(seconds, shown):
    assert measure.format_seconds(seconds) == shown


def test_interleaved_medians_calls_each_thunk_repeat_times_plus_warmup():
    calls = {"a": 0, "b": 0}

    def make(name):
        def thunk():
            calls[name] += 1
            import jax.numpy as jnp

            return jnp.zeros(())

        return thunk

    times = measure.interleaved_medians({"a": make("a"), "b": make("b")}, repeats=4)
    assert calls == {"a": 5, "b": 5}
    assert set(times) == {"a", "b"} and all(t >= 0 for t in times.values())
