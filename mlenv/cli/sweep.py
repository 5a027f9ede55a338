"""`mlenv sweep`: run a notebook over a grid / zip / random sample of parameters, report the results."""

from __future__ import annotations

from typing import List, Optional

import typer

from mlenv.cli import app, application
from mlenv.wording import counted


@app.command("sweep", json=True, no_args_is_help=False)
def sweep(
    ctx: typer.Context,
    notebook: Optional[str] = typer.Argument(None, help="The notebook (default: \\[sweep] notebook in mlenv.toml)."),
    param: List[str] = typer.Option([], "--param", "-p", metavar="NAME=VALUES",
                                    help="lr=0.1,0.01 | lr=loguniform:1e-4:1e-1 | uniform:LOW:HIGH | int:LOW:HIGH "
                                         "| choice:x,y"),
    yaml_param: List[str] = typer.Option([], "--yaml", "-y", metavar="YAML",
                                         help="Values as YAML, one per name: -y 'layers: [8, 16]' (repeat for more)."),
    raw_param: List[str] = typer.Option([], "--raw", "-r", metavar="NAME=TEXT",
                                        help="One string value as typed, commas and all: -r 'note=a,b'."),
    file: Optional[str] = typer.Option(None, "--file", "-f", help="A TOML file with the \\[sweep] keys."),
    zip_: bool = typer.Option(False, "--zip", help="Pair the i-th values of every parameter instead of a grid."),
    random: Optional[int] = typer.Option(None, "--random", metavar="N", help="Sample N runs from lists and ranges."),
    seed: Optional[int] = typer.Option(None, "--seed",
                                       help="Seed of --random (default 0: the same sample every time)."),
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", help="Runs at once (default: the number of cores)."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Seconds a single cell may run."),
    retries: Optional[int] = typer.Option(None, "--retries",
                                          help="Extra attempts when a kernel fails to start (default 1)."),
    output: Optional[str] = typer.Option(None, "--output", "-o",
                                         help="Results folder or s3:// prefix (default sweeps/<notebook>/)."),
    sort: Optional[str] = typer.Option(None, "--sort", metavar="METRIC[:desc]", help="Order of the summary."),
    kernel: Optional[str] = typer.Option(None, "--kernel", "-k", help="Kernel name (default: the notebook's)."),
    cluster: Optional[str] = typer.Option(None, "--cluster", metavar="tcp://HOST:8786", help="Run on a Dask cluster."),
    on: Optional[str] = typer.Option(None, "--on", metavar="BOX",
                                     help="Run on a dev box (`mlenv up`); the results come back to --output."),
    resume: bool = typer.Option(False, "--resume", help="Skip runs whose output already completed."),
    allow_drift: bool = typer.Option(False, "--allow-drift",
                                     help="Run although the kernel does not match mlenv.lock (recorded in results)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the planned runs and exit."),
) -> None:
    """Run NOTEBOOK once per parameter combination (papermill, fresh kernel each), in parallel.

    With --json, stdout is results.json (the plan with --dry-run)."""
    from mlenv.errors import UsageError
    from mlenv.sweep.config import resolve_options
    from mlenv.sweep.core import plan_sweep, run_sweep
    from mlenv.sweep.summary_view import print_plan, print_summary

    if on and cluster:
        raise UsageError("--on and --cluster exclude each other", hint="a box runs the sweep with its own cores")
    if cluster and jobs:
        raise UsageError("--jobs applies to local runs; a Dask cluster runs as many as it has worker threads",
                         hint="drop --jobs, or size the cluster with `dask worker --nworkers N`")
    mlenv = application(ctx)
    options = resolve_options(notebook, param, yaml_parameters=yaml_param, raw_parameters=raw_param, file=file,
                              zip_mode=zip_, random_samples=random, seed=seed, jobs=jobs, timeout=timeout,
                              retries=retries, output=output, sort=sort, kernel=kernel, cluster=cluster,
                              resume=resume, allow_drift=allow_drift, spec_path=mlenv.spec_path)
    if on:
        from pathlib import Path

        from mlenv.cli.boxes import box_executor
        from mlenv.sweep.on_box import BoxSweep, run_on_box
        from mlenv.sweep.store import is_url

        if is_url(str(options.notebook)):
            raise UsageError("--on takes a notebook on this machine", hint="copy it here first, or sweep it here")
        forwarded = [arg for value in param for arg in ("-p", value)]
        forwarded += [arg for value in yaml_param for arg in ("-y", value)]
        forwarded += [arg for value in raw_param for arg in ("-r", value)]
        for flag, value in (("--random", random), ("--seed", seed), ("--jobs", jobs), ("--timeout", timeout),
                            ("--retries", retries), ("--sort", sort), ("--kernel", kernel)):
            if value is not None:
                forwarded += [flag, str(value)]
        switches = (("--zip", zip_), ("--resume", resume), ("--allow-drift", allow_drift), ("--dry-run", dry_run),
                    ("--json", mlenv.json))
        forwarded += [flag for flag, given in switches if given]
        executor, _ = box_executor(ctx, on)
        job = BoxSweep(executor, Path(options.notebook), forwarded, options.output_location(),
                       sweep_file=Path(file).resolve() if file else None, resume=resume,
                       spec_path=options.spec_path)
        code = run_on_box(job, out=lambda text: print(text, end="", flush=True),
                          err=lambda text: mlenv.err.print(text, markup=False, highlight=False),
                          width=mlenv.out.width)
        if code == 0 and not dry_run:
            mlenv.success(f"sweep on box {on} finished; results in {options.output_location()}")
        raise typer.Exit(code)
    plan = plan_sweep(options, warn=mlenv.warn)
    if dry_run:
        print_plan(plan, mlenv.out, json_out=mlenv.json)
        return
    result = run_sweep(options, plan=plan, console=mlenv.err)
    problem = result.summary.sort_problem()
    if problem:
        mlenv.warn(problem)
    if mlenv.json:
        import sys

        sys.stdout.write(result.summary.to_json())
    else:
        print_summary(result.summary, mlenv.out)
    failed = result.summary.failed
    if failed:
        mlenv.err.print(f"[red]{len(failed)} of {counted(len(result.summary.records), 'run')} failed[/]; "
                          f"outputs and results in {result.summary.output}")
        raise typer.Exit(1)
    count = len(result.summary.records)
    mlenv.success(f"{counted(count, 'run')}; results in {result.summary.output}")
