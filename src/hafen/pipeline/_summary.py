"""Stage 6: the summary of a run, as a rich table and a few lines."""

from __future__ import annotations

from typing import Any

__all__ = ["print_summary", "summary_dict"]


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def summary_dict(result: Any) -> dict[str, Any]:
    """The summary as plain data (for ``--json`` and the benchmarks)."""
    return {
        "stages": [
            {
                "name": s.name,
                "rows": s.rows,
                "seconds": round(s.seconds, 3),
                "implementation": s.implementation,
                "detail": s.detail,
            }
            for s in result.stages
        ],
        "total_seconds": round(result.seconds, 3),
        "synth_seconds": None if result.synth_seconds is None else round(result.synth_seconds, 3),
        "wape_model": result.wape_model,
        "wape_baseline": result.wape_baseline,
        "holdout_rows": result.holdout_rows,
        "ranges": result.ranges,
        "peak_memory_bytes": result.peak_memory,
        "db_slots_max": result.db_slots_max,
        "db_concurrency": result.db_concurrency,
        "versions": result.versions,
        "steps": result.steps,
        "forecast_stores": result.forecast_stores,
        "watermark": result.watermark,
        "dashboard": result.dashboard,
    }


def print_summary(result: Any, console: Any) -> None:
    """Print a run's summary on a rich console: the stages, accuracy, memory peaks, versions."""
    from rich.table import Table

    table = Table(title="hafen pipeline summary", show_lines=False)
    table.add_column("stage")
    table.add_column("rows", justify="right")
    table.add_column("seconds", justify="right")
    table.add_column("implementation")
    table.add_column("detail")
    if result.synth_seconds is not None:
        table.add_row("0. synthetic database", "", f"{result.synth_seconds:.1f}", "", "")
    for i, s in enumerate(result.stages, 1):
        table.add_row(
            f"{i}. {s.name}", f"{s.rows:,}", f"{s.seconds:.1f}", s.implementation, s.detail
        )
    table.add_row("total (stages 1-5)", "", f"{result.seconds:.1f}", "", "")
    console.print(table)
    better = (1 - result.wape_model / result.wape_baseline) * 100 if result.wape_baseline else 0
    console.print(
        f"Accuracy on the held-out 28 days ({result.holdout_rows:,} rows): "
        f"WAPE model [bold]{result.wape_model:.3f}[/] vs seasonal naive "
        f"{result.wape_baseline:.3f} ({better:+.0f}% better)"
    )
    if result.ranges:
        r = result.ranges
        console.print(
            f"Ranges P10-P90 on the held-out days: coverage model [bold]"
            f"{r['coverage_model']:.0%}[/] vs seasonal naive {r['coverage_baseline']:.0%} "
            f"(target 80%); pinball loss {r['pinball_model']:.3f} vs {r['pinball_baseline']:.3f}"
        )
    workers = {k: v for k, v in result.peak_memory.items() if k != "client"}
    worker_peak = max(workers.values()) if workers else 0
    console.print(
        f"Peak memory: client {_mib(result.peak_memory.get('client', 0))}, "
        f"largest worker {_mib(worker_peak)} ({len(workers)} workers)"
    )
    console.print(
        f"Database slots used at most: {result.db_slots_max} of {result.db_concurrency} "
        "(cluster-wide limit, sampled every 50 ms)"
    )
    versions = ", ".join(f"{k} v{v}" for k, v in result.versions.items() if "/" not in k)
    console.print(f"Datasets under {result.config.datasets_root}: {versions}")
    if result.steps and set(result.steps.values()) == {"skip"}:
        console.print(
            f"Nothing arrived since the last run (ingest sequence {result.watermark}): "
            "no dataset got a new version"
        )
    elif result.watermark is not None:
        console.print(
            f"Covers the ingested batches up to {result.watermark}; stores forecast this run: "
            f"{len(result.forecast_stores)} of {len(result.store_metrics)}"
        )
