"""PNG charts of one benchmark run (matplotlib, Agg backend: no display needed).

``draw(result, out_dir, stem, suffix)`` writes, for what the run measured:

- ``<stem>-latency<suffix>.png``: one panel per timed workload, one bar per system;
- ``<stem>-bandwidth<suffix>.png``: upload/download GB/s against size, one line per system;
- ``<stem>-decode<suffix>.png``: per-token latency of each decode step, one line per system;
- ``<stem>-bytes<suffix>.png``: bytes moved per decode step, djinn against full return;
- ``<stem>-multitenant<suffix>.png``: aggregate tokens/s and server memory against N.

Returns the paths written.
"""

import math
import os
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {
    "local": "#4c72b0",
    "djinn": "#dd8452",
    "rpc": "#55a868",
    "naive": "#c44e52",
    "zmq": "#937860",
    "full return": "#8172b3",
}
ORDER = ("local", "djinn", "rpc", "naive", "zmq")


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fmt(v):
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def latency(rows, path):
    groups = ("micro", "small", "transformer", "large", "multitenant")
    rows = [
        r
        for r in rows
        if r["group"] in groups and r["better"] == "lower" and r["unit"] in ("us", "us/op", "ms")
    ]
    if not rows:
        return None
    cols = 3
    nrows = math.ceil(len(rows) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 3.4 * nrows), squeeze=False)
    for ax, r in zip(axes.flat, rows):
        systems = [s for s in ORDER if r["values"].get(s) is not None]
        vals = [r["values"][s] for s in systems]
        bars = ax.bar(systems, vals, color=[COLORS[s] for s in systems])
        if vals and min(vals) > 0 and max(vals) / min(vals) > 30:
            ax.set_yscale("log")
        for b, v in zip(bars, vals):
            ax.annotate(
                _fmt(v),
                (b.get_x() + b.get_width() / 2, b.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        title = r["name"]
        if r.get("target_met") is not None:
            title += "  [target " + ("met" if r["target_met"] else "missed") + "]"
        ax.set_title("\n".join(textwrap.wrap(title, 48)), fontsize=9)
        ax.set_ylabel(r["unit"] + " (lower is better)", fontsize=8)
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(rows) :]:
        ax.axis("off")
    fig.suptitle("Latency per workload, one bar per system (same machine, same run)", fontsize=11)
    return _save(fig, path)


def bandwidth(rows, path):
    rows = [r for r in rows if r["group"] == "bandwidth"]
    if not rows:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    for ax, direction in zip(axes, ("upload", "download")):
        rs = sorted(
            [r for r in rows if r["extra"]["direction"] == direction],
            key=lambda r: r["extra"]["bytes"],
        )
        for s in ORDER:
            pts = [
                (r["extra"]["bytes"], r["extra"]["GB/s"][s])
                for r in rs
                if r["extra"]["GB/s"].get(s)
            ]
            if pts:
                label = {"local": "local memcpy (copy_)", "zmq": "raw ZeroMQ, 2 processes"}.get(
                    s, s
                )
                ax.plot(
                    [p[0] for p in pts], [p[1] for p in pts], "o-", color=COLORS[s], label=label
                )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("tensor size (bytes)")
        how = " (t.to('remote') + synchronize)" if direction == "upload" else " (.cpu())"
        ax.set_title(f"{direction} bandwidth{how}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("GB/s (higher is better)")
    axes[0].legend(fontsize=8)
    return _save(fig, path)


def decode(series, path):
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(9, 4.2))
    for s in ORDER:
        ys = series.get(s)
        if ys:
            ax.plot(range(1, len(ys) + 1), ys, color=COLORS[s], label=s, lw=1.4)
    ax.set_yscale("log")
    ax.set_xlabel("decode step")
    ax.set_ylabel("ms per token (lower is better)")
    ax.set_title(f"Per-token decode latency, {series.get('label', '')}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def bytes_moved(rows, path):
    r = next((r for r in rows if r["group"] == "transformer" and r["unit"] == "bytes"), None)
    if r is None:
        return None
    names, vals = [], []
    for s in ("djinn", "rpc", "naive"):
        if r["values"].get(s):
            names.append(s)
            vals.append(r["values"][s])
    full = r["extra"].get("full_return_bytes_per_step")
    if full:
        names.append("full return")
        vals.append(full)
    fig, ax = plt.subplots(figsize=(8, 4.2))
    bars = ax.bar(names, vals, color=[COLORS[n] for n in names])
    ax.set_yscale("log")
    for b, v in zip(bars, vals):
        ax.annotate(
            f"{v:,.0f} B",
            (b.get_x() + b.get_width() / 2, b.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    red = r["extra"].get("djinn_reduction_vs_full_return")
    sub = ""
    if red is not None:
        sub = f"djinn moves {100 * red:.2f} % less than full return (target >= 99.7 %)"
    ax.set_title("Bytes moved per decode step (sent + received)\n" + sub, fontsize=10)
    ax.set_ylabel("bytes per token (log)")
    return _save(fig, path)


def multitenant(series, path):
    if not series or not series.get("n"):
        return None
    n = series["n"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    ax = axes[0]
    for s, key in (("local", "local_tok_s"), ("djinn", "djinn_tok_s")):
        how = " (N processes, own model each)" if s == "local" else " (N clients, one server)"
        ax.plot(n, series[key], "o-", color=COLORS[s], label=s + how)
    ax.set_xlabel("concurrent client processes N")
    ax.set_ylabel("aggregate decode tokens/s (higher is better)")
    ax.set_xticks(n)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Multi-tenant decode throughput", fontsize=10)
    ax = axes[1]

    def mb(key):
        return [b / 1e6 if b is not None else float("nan") for b in series.get(key, [])]

    ax.plot(
        n,
        [b / 1e6 for b in series["n_model_bytes"]],
        "o--",
        color=COLORS["local"],
        label="N separate processes (N x model bytes)",
    )
    if len(mb("bytes_held")) == len(n):
        ax.plot(
            n,
            mb("bytes_held"),
            "o-",
            color=COLORS["djinn"],
            label="djinn-server: bytes_in_use + text_bytes",
        )
    if len(mb("bytes_in_use")) == len(n):
        ax.plot(
            n,
            mb("bytes_in_use"),
            "s:",
            color=COLORS["djinn"],
            alpha=0.6,
            label="djinn-server: bytes_in_use (session-owned)",
        )
    ax.axhline(
        series["model_bytes"] / 1e6, color="grey", lw=0.8, ls=":", label="one copy of the weights"
    )
    ax.set_xlabel("concurrent client processes N")
    ax.set_ylabel("MB")
    ax.set_xticks(n)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Weights held for N sessions of one model", fontsize=10)
    return _save(fig, path)


def draw(result, out_dir, stem, suffix=""):
    rows = result["rows"]
    series = result.get("series", {})
    p = lambda name: os.path.join(out_dir, f"{stem}-{name}{suffix}.png")  # noqa: E731
    written = [
        latency(rows, p("latency")),
        bandwidth(rows, p("bandwidth")),
        decode(series.get("decode"), p("decode")),
        bytes_moved(rows, p("bytes")),
        multitenant(series.get("multitenant"), p("multitenant")),
    ]
    return [w for w in written if w]
