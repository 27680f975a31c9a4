"""lm-evaluation-harness results JSON files, flattened into the long table `lmscale emergence` reads."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from analysis.load import AnalysisError


def _model(result: dict, path: Path) -> str:
    """The model's name: `model_name`, else `pretrained=` in `config.model_args`, else the folder."""
    if result.get("model_name"):
        return str(result["model_name"])
    args = (result.get("config") or {}).get("model_args") or ""
    args = ",".join(f"{k}={v}" for k, v in args.items()) if isinstance(args, dict) else str(args)
    named = [a.split("=", 1)[1] for a in args.split(",") if a.startswith("pretrained=")]
    return named[0] if named else path.parent.name


def lmeval_table(folder: str | Path, params: dict[str, float]) -> pd.DataFrame:
    """Every `results*.json` under `folder` as rows model, params, task, shots, metric, value, n.

    `params` maps each model's name to its parameter count (lm-eval does not record it). Metrics keep
    lm-eval's names (`acc,none`, `acc_stderr,none`); `lmscale emergence` folds the stderr rows in.
    """
    rows = []
    for path in sorted(Path(folder).rglob("results*.json")):
        result = json.loads(path.read_text())
        model = _model(result, path)
        if model not in params:
            raise AnalysisError(f"'{path}': no parameter count for model '{model}' in params")
        for task, metrics in result.get("results", {}).items():
            shots = (result.get("n-shot") or {}).get(task, 0)
            n = ((result.get("n-samples") or {}).get(task) or {}).get("effective")
            for metric, value in metrics.items():
                if metric != "alias" and isinstance(value, int | float):
                    rows.append((model, params[model], task, shots, metric, value, n))
    if not rows:
        raise AnalysisError(f"'{folder}': no lm-eval results*.json files with results")
    return pd.DataFrame(rows, columns=["model", "params", "task", "shots", "metric", "value", "n"])
