"""connect: what a connection to a box costs through each path mlenv offers.

A real sshd on loopback (root login, keys in a temporary folder) stands in for a box.  Measured:
the user's OpenSSH through mlenv's generated entry (`ssh mlenv-NAME true`, strict host-key checking
on) beside the same call with every option on the command line (no config: the floor), mlenv's
paramiko session (connect + pinned-key check + auth + one command), one command on an open
``SSHExecutor`` connection (what doctor probes and keep-alives pay per command), and `mlenv code
NAME --print`.  HOME and MLENV_HOME point at a temporary folder: the real ~/.ssh is never touched.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import (
    Row,
    Skip,
    command_runner,
    in_process,
    interleave,
    print_table,
    python,
    repetitions,
)

BENCHMARK = "connect"


def _start_sshd(base: Path) -> int:
    if not (Path("/usr/sbin/sshd").exists() and shutil.which("ssh")) or os.geteuid() != 0:
        raise Skip("needs OpenSSH (sshd + ssh) and root to start sshd")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    Path("/run/sshd").mkdir(exist_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(base / "hostkey")], check=True)
    (base / "root_keys").touch(mode=0o600)
    (base / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {base}/hostkey\nPidFile {base}/sshd.pid\n"
        f"AuthorizedKeysFile {base}/root_keys\nPasswordAuthentication no\nStrictModes no\nUsePAM no\n")
    subprocess.run(["/usr/sbin/sshd", "-f", str(base / "sshd_config")], check=True)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return port
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("sshd did not start")


def main() -> list[Row]:
    repeat = repetitions(15, 5)
    with tempfile.TemporaryDirectory(prefix="mlenv-bench-connect-") as tmp:
        base = Path(tmp)
        os.environ["HOME"] = str(base / "home")
        os.environ["MLENV_HOME"] = str(base / "data")
        (base / "home").mkdir()
        port = _start_sshd(base)
        try:
            from mlenv import connect
            from mlenv.boxes.model import Box
            from mlenv.connect.keys import local_key
            from mlenv.execute import SSHExecutor

            key = local_key()
            (base / "root_keys").write_text(key.public_line + "\n")
            host_public = " ".join((base / "hostkey.pub").read_text().split()[:2])
            box = Box(name="bench", provider="ssh", state="running", ssh_host="127.0.0.1", ssh_port=port,
                      ssh_user="root", host_keys=[host_public])
            connect.register(box)
            config = str(base / "home" / ".ssh" / "config")
            known = base / "plain_known_hosts"
            known.write_text(f"[127.0.0.1]:{port} {host_public}\n")
            env = dict(os.environ)
            cases = {
                "ssh -F none (all options on the command line)": command_runner(
                    ["ssh", "-F", "none", "-i", str(key.private_path), "-o", "IdentitiesOnly=yes", "-o",
                     "BatchMode=yes", "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes",
                     "-p", str(port), "root@127.0.0.1", "true"], env=env),
                "ssh mlenv-bench true (mlenv's entry via Include)": command_runner(
                    ["ssh", "-F", config, "-o", "BatchMode=yes", "mlenv-bench", "true"], env=env),
                "mlenv code bench --print": command_runner(
                    [python(), "-m", "mlenv", "code", "bench", "--print"], env=env),
            }
            samples = interleave(cases, repeat=repeat, warmup=1)

            def fresh_session() -> None:
                with connect.open_session(box) as ssh:
                    ssh.capture("true")

            executor = SSHExecutor(box)
            samples["paramiko session: connect, check pinned key, auth, run `true`"] = in_process(
                fresh_session, repeat)
            samples["SSHExecutor.run(['true']) on its open connection"] = in_process(
                lambda: executor.run(["true"]), repeat * 4)
            executor.close()
        finally:
            pid = base / "sshd.pid"
            if pid.exists():
                os.kill(int(pid.read_text()), 15)
    rows = [Row(BENCHMARK, name, times) for name, times in samples.items()]
    floor = rows[0].median
    rows[1].ratio = rows[1].median / floor
    rows[1].note = "strict host-key checking on, like the floor"
    print_table("connect: one command on a box (loopback sshd)", rows,
                caption="ratio = median / median of ssh with every option on the command line")
    return rows


if __name__ == "__main__":
    main()
