"""``hafen demo --tenants``: a tenant posts its data through the API, the pipeline runs on the
tenant's database and dataset root, one more week is posted, the pipeline runs again, and the
running service answers the new forecasts without a restart."""

from __future__ import annotations

import datetime as dt
import io

from rich.console import Console

from hafen.cli._loop import customer_loop
from hafen.pipeline import SynthParams


def test_the_customer_loop_end_to_end(tmp_path, client):
    out = io.StringIO()
    synth = SynthParams(stores=2, products=6, days=200, seed=3)
    result = customer_loop(
        tmp_path, synth=synth, console=Console(file=out, width=200), client=client
    )
    before, after = result["before"], result["after"]
    assert after["version"] > before["version"]
    # the second run was incremental: only the new week was extracted and appended
    steps = result["second_steps"]
    assert steps["raw/sales"] == steps["sales"] == steps["sales_by_store"] == "append"
    assert steps["raw/products"] == "skip"
    first = dt.date.fromisoformat(before["rows"][0]["date"])
    assert dt.date.fromisoformat(after["rows"][0]["date"]) == first + dt.timedelta(days=7)
    for row in after["rows"]:
        assert row["p10"] <= row["p50"] <= row["p90"]
    text = out.getvalue()
    assert "posted one more week" in text and "mean absolute change" in text
    assert "second run: incremental" in text and "before -> after one more week" in text
