"""A saved result (``--json``) as the markdown the docs quote, and as a chart."""

from __future__ import annotations

from benchmarks import contrastive, ctc, linear, lm, losses, matmuls, memory

TABLES = {
    "losses": losses.table,
    "linear": linear.table,
    "lm": lm.table,
    "matmuls": matmuls.table,
    "memory": memory.table,
    "ctc": ctc.table,
    "contrastive": contrastive.table,
}


def environment_line(env: dict) -> str:
    return (
        f"{env['date']}, {env['backend']} ({env['device']}, {env['machine']}), "
        f"jax {env['jax']}, Python {env['python']}"
    )


def report(result: dict) -> str:
    """Markdown for a saved result: the environment line and its tables."""
    parts = [environment_line(result["environment"])]
    parts += [table(result[suite]) for suite, table in TABLES.items() if result.get(suite)]
    return "\n\n".join(parts)


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = result.get("losses", [])
    linear = result.get("linear", [])
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    labels = [f"{r['benchmark']}\n{tuple(r['shape'])} {r['dtype']}" for r in losses]
    positions = range(len(losses))
    axes[0].barh(
        [p - 0.2 for p in positions],
        [r["jaxloss_vs_copy"] for r in losses],
        height=0.4,
        label="jaxloss / copy floor",
    )
    axes[0].barh(
        [p + 0.2 for p in positions],
        [r["naive_s"] / r["copy_s"] for r in losses],
        height=0.4,
        label="naive autodiff / copy floor",
    )
    axes[0].axvline(1.0, color="k", lw=1)
    axes[0].set_yticks(list(positions), labels, fontsize=7)
    axes[0].set_xlabel("time / time of one read + one write of the logits (lower is faster)")
    axes[0].legend(fontsize=8)
    lin_labels = ["×".join(map(str, r["shape"])) + f"\n{r['dtype']}" for r in linear]
    axes[1].bar(range(len(linear)), [r["temp_over_floor"] for r in linear])
    axes[1].set_xticks(range(len(linear)), lin_labels, fontsize=7, rotation=25)
    axes[1].set_ylabel("compiled temp bytes / (dx + dw bytes) (lower: less memory)")
    env = result["environment"]
    fig.suptitle(
        f"jaxloss benchmark, {env['date']}, {env['backend']} ({env['device']}), jax {env['jax']}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
