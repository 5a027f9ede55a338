"""``mlenv sweep --on BOX``: the same sweep, run by the ``mlenv`` on a dev box, results brought back.

Everything goes through the box's executor (docker exec, SSH): the notebook (and, in a locked
project, mlenv.toml, mlenv.lock and the pylock files, so the box checks its kernel against the same
lock) is written to a fresh folder on the box, ``mlenv sweep`` starts there in the background, its
progress lines are streamed back while it runs, the box's keep-alive is held (the watchdog must not
stop a box in the middle of a sweep), and the results folder is copied back to ``--output``.
Ctrl-C or SIGTERM here stops the sweep there the same way (finished runs are kept and copied back).
"""

from __future__ import annotations

import shlex
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from mlenv.errors import ExitCode, Interrupted, MlenvError

if TYPE_CHECKING:
    from mlenv.execute import Executor

KEEPALIVE_S = 600  # each hold lasts this long; renewed well before it ends
RENEW_S = 120
HOLDER = "sweep"


@dataclass
class BoxSweep:
    executor: Executor
    notebook: Path
    args: list[str]  # the sweep's options except the notebook, -f, -o and --on
    output: str  # local folder (copied back) or a URL (written by the box itself)
    sweep_file: Path | None = None
    resume: bool = False
    spec_path: Path | None = None  # --spec: the project whose lock the box checks against


def _project_files(notebook: Path, spec_path: Path | None) -> tuple[Path, list[Path]] | None:
    """(root, files) of the locked project (``--spec``'s, else the notebook's), to check the box against
    the same lock."""
    from mlenv.sweep.environment import _project

    project = _project(notebook.parent, spec_path)
    if project is None:
        return None
    spec, lock, _ = project
    files = [spec.root / "mlenv.toml", spec.root / "mlenv.lock"]
    files += [spec.root / target.pylock_path for target in lock.targets.values()]
    return spec.root, [path for path in files if path.is_file()]


def run_on_box(job: BoxSweep, *, out: Callable[[str], None], err: Callable[[str], None], width: int = 100) -> int:
    """Run the sweep on the box; returns its exit code (the results are here when it wrote any)."""
    from mlenv import boxes
    from mlenv.execute import copy_tree_from, write_file
    from mlenv.sweep.core import SigtermAsInterrupt, Terminated
    from mlenv.sweep.store import is_url

    executor = job.executor
    remote = f"/tmp/mlenv-sweep-{uuid.uuid4().hex[:12]}"
    project = _project_files(job.notebook, job.spec_path)
    if project:
        root, files = project
        for path in files:
            write_file(executor, f"{remote}/{path.relative_to(root).as_posix()}", path.read_bytes())
        if job.notebook.resolve().is_relative_to(root.resolve()):
            notebook = f"{remote}/{job.notebook.resolve().relative_to(root.resolve()).as_posix()}"
        else:  # --spec names a project the notebook is not in: below the copy, the box finds it the same
            notebook = f"{remote}/.notebook/{job.notebook.name}"
    else:
        notebook = f"{remote}/{job.notebook.name}"
    write_file(executor, notebook, job.notebook.read_bytes())
    args = ["mlenv", "sweep", notebook, *job.args]
    if job.sweep_file is not None:
        write_file(executor, f"{remote}/.sweep/{job.sweep_file.name}", job.sweep_file.read_bytes())
        args += ["-f", f"{remote}/.sweep/{job.sweep_file.name}"]
    local = not is_url(job.output)
    results = f"{remote}/.results" if local else job.output
    if local and job.resume:  # the box resumes from the outputs already here
        for path in sorted(Path(job.output).glob("*.ipynb")):
            write_file(executor, f"{results}/{path.name}", path.read_bytes())
    args += ["-o", results]
    command = " ".join(shlex.quote(arg) for arg in args)
    q = shlex.quote
    # detached from this exec: the sweep outlives the command that starts it; its pid and exit code in files
    inner = (f"COLUMNS={width} {command} > {q(remote + '/out')} 2> {q(remote + '/err')} & "
             f"echo $! > {q(remote + '/pid')}; wait $!; echo $? > {q(remote + '/exit')}")
    executor.run(["sh", "-c", f"cd {q(remote)} && nohup sh -c {q(inner)} > /dev/null 2>&1 &"]).check(
        f"starting mlenv sweep on {executor.where}")
    err(f"sweep started on {executor.where} in {remote}")

    offset, renewed, stopping, code = 0, 0.0, None, None
    try:
        with SigtermAsInterrupt():
            while code is None:
                try:
                    if time.monotonic() - renewed > RENEW_S:
                        boxes.hold(executor, KEEPALIVE_S, holder=HOLDER)
                        renewed = time.monotonic()
                    offset, code = _poll(executor, remote, offset, err)
                    if code is None:
                        time.sleep(1.0)
                except KeyboardInterrupt as stop:
                    if stopping is not None:
                        continue  # already forwarded; wait for it to write its results
                    stopping = "SIGTERM" if isinstance(stop, Terminated) else "Ctrl-C"
                    signal_name = "TERM" if stopping == "SIGTERM" else "INT"
                    executor.run(["sh", "-c", f"kill -{signal_name} $(cat {q(remote + '/pid')})"])
                    err(f"stopping the sweep on {executor.where} ({stopping}); its finished runs are kept")
        _poll(executor, remote, offset, err)
        output = executor.run(["cat", f"{remote}/out"])
        if output.returncode == 0 and output.text:
            out(output.text)
        if local and executor.run(["test", "-d", results]).returncode == 0:
            copy_tree_from(executor, results, job.output)
    finally:
        try:
            boxes.release(executor, holder=HOLDER)
        except MlenvError:
            pass
        executor.run(["rm", "-rf", remote])
    if stopping is not None:
        error = Interrupted(f"sweep on {executor.where} stopped by {stopping}; results in {job.output}",
                            hint="run the same command with --resume to finish it")
        if stopping == "SIGTERM":
            error.exit_code = ExitCode.TERMINATED
        raise error
    return code


def _poll(executor: Executor, remote: str, offset: int, err: Callable[[str], None]) -> tuple[int, int | None]:
    """New progress lines from the box (printed), and its exit code once the sweep ended."""
    q = shlex.quote
    result = executor.run(["sh", "-c", f"cat {q(remote + '/exit')} 2>/dev/null; echo; "
                                       f"tail -c +{offset + 1} {q(remote + '/err')} 2>/dev/null"])
    first, _, text = result.text.partition("\n")
    if text:
        complete = text[: text.rfind("\n") + 1] if first.strip() == "" else text  # whole lines until the end
        if complete:
            err(complete.rstrip("\n"))
            offset += len(complete.encode())
    return offset, int(first) if first.strip().isdigit() else None
