"""Configs that are several runs in order (a teacher, then students that learn from it).

A pipeline config has `jobs`: name -> run config. Each job runs in `workdir/<name>`; a
`teacher.workdir` may say `{workdir}` for the pipeline's workdir. A job whose summary.json
exists is finished and is not run again, so rerunning the command resumes the pipeline.
"""
import copy
import json
import os
from typing import Any

import ml_collections

from vid_jax.train import train_and_evaluate


def run_jobs(config: ml_collections.ConfigDict, workdir: str) -> dict[str, dict[str, Any]]:
    summaries = {}
    for name in config.job_order:
        job = copy.deepcopy(config.jobs[name])
        job_dir = os.path.join(workdir, name)
        summary_path = os.path.join(job_dir, "summary.json")
        if os.path.exists(summary_path):
            with open(summary_path) as f:
                summaries[name] = json.load(f)
            print(f"[{name}] finished earlier: {summary_path}")
            continue
        if job.get("teacher") and job.teacher.get("workdir"):
            with job.unlocked():
                job.teacher.workdir = job.teacher.workdir.format(workdir=workdir)
        print(f"[{name}] training in {job_dir}", flush=True)
        summaries[name] = train_and_evaluate(job, job_dir)
        print(f"[{name}] {summaries[name]['epochs']} epochs, final test accuracy "
              f"{100 * summaries[name]['final_test_accuracy']:.2f}%", flush=True)
    return summaries


def accuracy_table(summaries: dict[str, dict[str, Any]],
                   descriptions: dict[str, str] | None = None) -> str:
    """A markdown table of final and best test accuracy per job, and of each distillation
    term's loss where it has terms: at the first step (before any update; the first epoch's
    mean for runs that did not record it) and the mean over the last epoch."""
    descriptions = descriptions or {}
    with_terms = any(s.get("term_losses") for s in summaries.values())
    header = "| run | what | final test acc | best test acc |"
    lines = [header + (" term loss: first step -> last epoch |" if with_terms else ""),
             "|---|---|---|---|" + ("---|" if with_terms else "")]
    for name, s in summaries.items():
        line = (f"| {name} | {descriptions.get(name, '')} | "
                f"{100 * s['final_test_accuracy']:.2f} | {100 * s['best_test_accuracy']:.2f} |")
        if with_terms:
            runs = [(stage, summary["term_losses"])
                    for stage, summary in s.get("stages", {}).items()]
            runs.append(("", s.get("term_losses", {})))
            line += " " + ", ".join(
                f"{term}{f' ({stage})' if stage else ''}: "
                f"{v['first_epoch'] if v.get('first_step') is None else v['first_step']:.4g} -> "
                f"{v['last_epoch']:.4g}" for stage, losses in runs for term, v in losses.items()
            ) + " |"
        lines.append(line)
    return "\n".join(lines)
