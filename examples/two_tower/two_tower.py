"""A two-tower model trained with CLIP's ``contrastive_loss`` on synthetic paired data,
the batch split over 8 host CPU devices in one process.

Each pair is two noisy views of one hidden vector, each seen through its own random
linear map; each tower (one tanh layer and a projection to unit-norm embeddings) learns
to embed its view so that a pair's embeddings match among the batch. The step is jitted
under ``jax.set_mesh`` with the batch on the mesh's ``"data"`` axis, so the loss runs
each device's pairs against the gathered other side; the temperature is learned too
(``logit_scale = exp(t)``, as CLIP does)::

    python examples/two_tower/two_tower.py --steps 150

It prints the loss as it falls and, at the end, how often each ``x`` ranks its own
``y`` first among a held-out batch.
"""

from __future__ import annotations

import argparse
import os
import sys

if __name__ == "__main__" and "jax" not in sys.modules:
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    )

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import jaxloss as jl  # noqa: E402

LATENT, VIEW, HIDDEN, EMBED = 16, 32, 64, 16


def make_views(key, count):
    """``count`` pairs: two noisy views of one hidden vector through fixed maps."""
    maps = jax.random.normal(jax.random.key(1234), (2, LATENT, VIEW)) / LATENT**0.5
    latent_key, noise_key = jax.random.split(key)
    latent = jax.random.normal(latent_key, (count, LATENT))
    noise = 0.3 * jax.random.normal(noise_key, (2, count, VIEW))
    return latent @ maps[0] + noise[0], latent @ maps[1] + noise[1]


def init(key):
    keys = jax.random.split(key, 4)

    def layer(k, fan_in, fan_out):
        return jax.random.normal(k, (fan_in, fan_out)) / fan_in**0.5

    tower = lambda a, b: {"hidden": layer(a, VIEW, HIDDEN), "out": layer(b, HIDDEN, EMBED)}  # noqa: E731
    return {"x": tower(*keys[:2]), "y": tower(*keys[2:]), "t": jnp.log(jnp.asarray(10.0))}


def embed(tower, view):
    e = jnp.tanh(view @ tower["hidden"]) @ tower["out"]
    return e / jnp.linalg.norm(e, axis=-1, keepdims=True)


def loss_fn(params, x_view, y_view):
    x, y = embed(params["x"], x_view), embed(params["y"], y_view)
    return jl.contrastive_loss(x, y, logit_scale=jnp.exp(params["t"]))


def top1(params, x_view, y_view):
    """How often each x's most similar y is its own."""
    x, y = embed(params["x"], x_view), embed(params["y"], y_view)
    return jnp.mean(jnp.argmax(x @ y.T, axis=1) == jnp.arange(x.shape[0]))


@jax.jit
def step(params, x_view, y_view, learning_rate):
    loss, grads = jax.value_and_grad(loss_fn)(params, x_view, y_view)
    return jax.tree.map(lambda p, g: p - learning_rate * g, params, grads), loss


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--learning-rate", type=float, default=0.3)
    parser.add_argument("--log-every", type=int, default=25)
    args = parser.parse_args(argv)
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    rows = NamedSharding(mesh, P("data"))
    params = init(jax.random.key(0))
    print(f"{jax.device_count()} devices, {args.batch} pairs a step over the 'data' axis")
    curve = []
    with jax.set_mesh(mesh):
        for i in range(args.steps):
            views = make_views(jax.random.key(i + 1), args.batch)
            x_view, y_view = (jax.device_put(v, rows) for v in views)
            params, loss = step(params, x_view, y_view, args.learning_rate)
            if i % args.log_every == 0 or i == args.steps - 1:
                curve.append((i, float(loss)))
                print(
                    f"step {i:4d}  loss {float(loss):.4f}  scale {float(jnp.exp(params['t'])):.2f}"
                )
        held_out = make_views(jax.random.key(0), args.batch)
        accuracy = float(top1(params, *held_out))
    print(f"held-out top-1 among {args.batch}: {accuracy:.3f} (chance {1 / args.batch:.4f})")
    return {"devices": jax.device_count(), "loss_curve": curve, "top1": accuracy}


if __name__ == "__main__":
    main()
