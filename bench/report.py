"""The benchmark's outputs: a Markdown table, the goals, and a chart."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from .apps import BASELINE  # noqa: E402
from .command_line import QUICK_NOTE  # noqa: E402

# Differences smaller than this are within what repeated runs move by, or
# nearly: on a busy 2-core machine, runs in one process and in fresh ones
# moved step 4's ratios to the bare app and to Flask-SQLAlchemy by up to
# 0.03 on SQLite, and by 0.05 to 0.07 on PostgreSQL.
NOISE = 0.02


def goals(backend):
    """Check the README's goals against one backend's numbers."""
    timings = backend["in_process"]

    def over(name, base):
        # From the µs, which the ratios (to step 4, two decimals) round off.
        return timings[name]["µs per request"] / timings[base]["µs per request"]

    def step4_over(name):
        return over(BASELINE, name)

    app_context_over_thread = over("bare, app-context scope", "bare scoped_session")

    pid_check = backend["pid check"]
    share = pid_check["share of step 4's request"]
    rows = [
        {
            "goal": "step 4's pid check costs under 1% of a request",
            "measured": f"{share:.2%} ({pid_check['claim() calls per request']}"
            f" × {pid_check['µs per claim()']:.2f} µs)",
            "met": "yes" if share < 0.01 else "NO",
        }
    ]
    checks = [
        (
            "step 4 costs at most 5% more than a bare scoped_session app",
            step4_over("bare scoped_session"),
            step4_over("bare scoped_session") <= 1.05,
        ),
        (
            "step 4 is no slower than Flask-SQLAlchemy 3.1",
            step4_over("Flask-SQLAlchemy 3.1"),
            step4_over("Flask-SQLAlchemy 3.1") <= 1 + NOISE,
        ),
        (
            "app-context scope (step 9) is no slower than thread scope",
            app_context_over_thread,
            app_context_over_thread <= 1 + NOISE,
        ),
        (
            "step 4 is no slower than Flask-SQLAlchemy-Lite",
            step4_over("Flask-SQLAlchemy-Lite"),
            step4_over("Flask-SQLAlchemy-Lite") <= 1 + NOISE,
        ),
    ]
    rows += [
        {"goal": goal, "measured": f"{ratio:.3f}", "met": "yes" if met else "NO"}
        for goal, ratio, met in checks
    ]
    if "load" in backend:
        load = backend["load"]
        errors = sum(row["errors"] for row in load["rows"])
        rows.append(
            {
                "goal": "under load, zero errors at every concurrency",
                "measured": f"{errors} errors",
                "met": "yes" if errors == 0 else "NO",
            }
        )
        seen = [row["most server connections"] for row in load["rows"]]
        allowed = load["server connections allowed"]
        if None not in seen:
            rows.append(
                {
                    "goal": "server connections never above workers × "
                    "(pool_size + max_overflow), + 1 for the master",
                    "measured": f"{max(seen)} of {allowed}",
                    "met": "yes" if max(seen) <= allowed else "NO",
                }
            )
    return rows


def table(rows):
    """Render a list of dicts as a Markdown table."""
    columns = list(rows[0])
    lines = [
        "| " + " | ".join(columns) + " |",
        "| " + " | ".join("---" for _ in columns) + " |",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row[column]) for column in columns) + " |")
    return "\n".join(lines) + "\n"


def _cell(value):
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def markdown(results):
    """Render the results as Markdown."""
    versions = ", ".join(
        f"{name} {value}" for name, value in results["versions"].items()
    )
    parts = [
        "# Benchmark results\n\n",
        f"Measured with {versions}."
        + (f" {QUICK_NOTE}" if results["quick"] else "")
        + "\n",
    ]
    for backend in results["backends"]:
        parts.append(f"\n## {backend['backend']}: GET {backend['path']}, in-process\n")
        parts.append(
            "\nµs per request through Flask's test client, every request timed on"
            " its own, the cases taking turns: each case's fastest request (noise"
            f" only ever adds time); ratio to {BASELINE}'s.\n\n"
        )
        parts.append(
            table(
                [
                    {"case": name, **values}
                    for name, values in backend["in_process"].items()
                ]
            )
        )
        pid_check = backend["pid check"]
        share = pid_check["share of step 4's request"]
        step4 = backend["in_process"]["step04_pooling"]["µs per request"]
        parts.append(
            f"\nStep 4's pid check (bench/pid_check.py): one claim() takes"
            f" {pid_check['µs per claim()']} µs, and one GET calls it"
            f" {pid_check['claim() calls per request']} times:"
            f" {pid_check['µs per request']} µs, {share:.2%} of step 4's"
            f" {step4} µs.\n"
        )
        if "load" in backend:
            load = backend["load"]
            parts.append(
                f"\n## {backend['backend']}: step04_pooling under gunicorn"
                f" ({load['workers']} workers × {load['threads']} threads, --preload)"
                " and wrk\n\n"
            )
            parts.append(table(load["rows"]))
        if not results["quick"]:
            parts.append(f"\n## {backend['backend']}: goals\n\n")
            parts.append(table(goals(backend)))
    return "".join(parts)


def chart(results, path):
    """Draw the in-process costs, and throughput and p99 under load."""
    backends = results["backends"]
    with_load = [backend for backend in backends if "load" in backend]
    rows = 1 + bool(with_load)
    figure, axes = plt.subplots(
        rows, len(backends), figsize=(7 * len(backends), 5 * rows), squeeze=False
    )
    for column, backend in enumerate(backends):
        names = list(backend["in_process"])
        values = [backend["in_process"][name]["µs per request"] for name in names]
        ratios = [backend["in_process"][name]["ratio"] for name in names]
        ax = axes[0][column]
        bars = ax.barh(names, values, color="#4c72b0")
        ax.bar_label(bars, [f" ×{ratio:.2f}" for ratio in ratios])
        ax.invert_yaxis()
        ax.set_xlabel("µs per request (fastest); × step 4")
        ax.set_title(f"{backend['backend']}: GET {backend['path']}")
        ax.margins(x=0.25)
        if "load" in backend:
            ax = axes[1][column]
            load_rows = backend["load"]["rows"]
            levels = [row["concurrency"] for row in load_rows]
            ax.plot(levels, [row["requests per second"] for row in load_rows], "o-")
            ax.set_xscale("log", base=2)
            ax.set_xticks(levels, [str(level) for level in levels])
            ax.set_xlabel("concurrent connections (wrk)")
            ax.set_ylabel("requests per second", color="#1f77b4")
            p99 = ax.twinx()
            p99.plot(
                levels, [row["p99 ms"] for row in load_rows], "s--", color="#d62728"
            )
            p99.set_ylabel("p99 latency, ms", color="#d62728")
            ax.set_title(f"{backend['backend']}: step 4 under gunicorn")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
