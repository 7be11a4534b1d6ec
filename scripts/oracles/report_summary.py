"""The summary table of `alp-rl report`, computed independently with pandas from each run's
metrics.parquet, as docs/analysis.md defines it. Prints one JSON object per run directory given.

usage: report_summary.py RUN [RUN ...]
"""
import json
import math
import os
import sys

import pandas as pd


def opt(v):
    """NaN (pandas' empty max, a missing column) is JSON null, as the report writes it."""
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def col_max(df, name):
    return opt(df[name].max()) if name in df else None


def kl_spikes(df):
    if "mismatch/k3" not in df:
        return None
    k3 = df["mismatch/k3"].dropna().reset_index(drop=True)
    # Running median of the previous values: expanding median shifted by one, at least 3 of them.
    previous = k3.expanding(min_periods=3).median().shift(1)
    return int((k3 > 10 * previous).sum())


def summary(run):
    df = pd.read_parquet(os.path.join(run, "metrics.parquet")).sort_values("step")
    acc = df["eval/accuracy"].dropna() if "eval/accuracy" in df else pd.Series(dtype=float)
    times = [df[c].sum() for c in ("time/step_s", "time/eval_s") if c in df]
    return {
        "steps": int(df["step"].max()),
        "final_heldout_accuracy": opt(acc.iloc[-1]) if len(acc) else None,
        "best_heldout_accuracy": opt(acc.max()) if len(acc) else None,
        "max_ratio_q99": col_max(df, "ratio/q99"),
        "max_ratio_q999": col_max(df, "ratio/q999"),
        "max_ratio_seq_max": col_max(df, "ratio_seq/max"),
        "kl_spikes": kl_spikes(df),
        "max_staleness": col_max(df, "staleness/max"),
        "wall_time_s": opt(sum(times)) if times else None,
    }


print(json.dumps({run: summary(run) for run in sys.argv[1:]}))
