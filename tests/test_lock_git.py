"""git dependencies locked by commit, and modules two installed distributions both provide.

The repositories are real: ``git init`` in a temporary folder, a tiny pure-Python package built by
uv's own build backend (no index needed), commits and a tag, reached through ``git+file://`` and,
for credentials, through git's HTTP protocol served by a loopback server that demands them.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import threading
import tomllib
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import tomli_w

from tests.conftest import REPO, lock, read, run_mlenv, write_spec


def package(data: dict, key: str, name: str) -> dict:
    return next(entry for entry in data[key] if entry["name"] == name)


def mark(project: Path) -> str:
    python = project / ".venv" / "bin" / "python"
    return subprocess.run([python, "-c", "import gitpkg; print(gitpkg.MARK)"], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_a_git_dependency_is_locked_by_the_commit_its_ref_names(tmp_path, local_index, git_repo):
    project = tmp_path / "project"
    project.mkdir()
    write_spec(project, local_index.url, dependencies=("tinylib", f"gitpkg @ {git_repo.url}@v1"))
    lock(project)

    # mlenv.lock: the repository, the ref asked for and the full commit, under the lock's digest
    locked = package(read(project, "mlenv.lock"), "package", "gitpkg")
    assert locked["vcs"] == {"type": "git", "url": f"file://{git_repo.path}", "requested-revision": "v1",
                             "commit-id": git_repo.first}
    assert locked["index"] == "url" and locked["artifacts"] == []
    # the pylock carries PEP 751's [packages.vcs], which uv installs from
    entry = package(read(project, "pylock.cpu.toml"), "packages", "gitpkg")
    assert entry["vcs"] == locked["vcs"] and "index" not in entry
    lock(project, "--check")
    lock(project)  # the previous pylock as preferences: the same commit, nothing rewritten
    assert package(read(project, "mlenv.lock"), "package", "gitpkg")["vcs"]["commit-id"] == git_repo.first
    # an image installs the pylock in its deps stage, where uv needs git to fetch the commit
    assert run_mlenv("gen", "dockerfile", cwd=project).returncode == 0
    dockerfile = (project / "Dockerfile").read_text()
    assert "apt-get install -y --no-install-recommends git" in dockerfile.split("FROM base AS tools")[0]

    # a hand edit of the commit breaks the lock's digest like any other record
    text = (project / "mlenv.lock").read_text()
    (project / "mlenv.lock").write_text(text.replace(git_repo.first, git_repo.second))
    result = lock(project, "--check", expect=4)
    assert "edited by hand" in result.stderr


def test_sync_installs_the_locked_commit_and_doctor_sees_another(tmp_path, local_index, git_repo):
    project = tmp_path / "project"
    project.mkdir()
    write_spec(project, local_index.url, dependencies=("tinylib", f"gitpkg @ {git_repo.url}@main"))
    lock(project)
    third = git_repo.commit("third")  # the branch moves on after locking
    lock(project, "--check")  # the spec did not change: still fresh, still the second commit
    assert run_mlenv("sync", cwd=project).returncode == 0
    assert mark(project) == "second"
    direct = json.loads(next((project / ".venv").glob("lib/python*/site-packages/gitpkg-*.dist-info/direct_url.json"))
                        .read_text())
    assert direct["vcs_info"]["commit_id"] == git_repo.second
    assert run_mlenv("doctor", cwd=project).returncode == 0

    # someone installs the branch head by hand: same version, another commit
    from uv import find_uv_bin

    subprocess.run([find_uv_bin(), "pip", "install", "--quiet", "--python", str(project / ".venv" / "bin" / "python"),
                    f"gitpkg @ {git_repo.url}@{third}"], check=True)
    result = run_mlenv("doctor", cwd=project)
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.search(rf"error +package +gitpkg +commit {git_repo.second[:12]} +commit {third[:12]}", result.stdout)
    finding = json.loads(run_mlenv("doctor", "--json", cwd=project).stdout)["findings"][0]
    assert finding["message"] == (f"gitpkg 1.0 is from commit {third[:12]}, the lock pins commit "
                                  f"{git_repo.second[:12]} of file://{git_repo.path}")
    assert run_mlenv("sync", cwd=project).returncode == 0
    assert mark(project) == "second"
    assert run_mlenv("doctor", cwd=project).returncode == 0


def test_changing_the_ref_makes_the_lock_stale(tmp_path, local_index, git_repo):
    project = tmp_path / "project"
    project.mkdir()
    spec = write_spec(project, local_index.url, dependencies=(f"gitpkg @ {git_repo.url}@v1",))
    lock(project)
    spec.write_text(spec.read_text().replace("@v1", f"@{git_repo.second}"))
    result = lock(project, "--check", expect=1)
    assert "gitpkg" in result.stderr and git_repo.second in result.stderr
    # --json: the version in "old"/"new" as for any package, the full commits in their own field
    result = lock(project, "--json")
    assert json.loads(result.stdout)["updates"] == [
        {"target": "cpu", "package": "gitpkg", "old": "1.0", "new": "1.0",
         "commit": {"old": git_repo.first, "new": git_repo.second}}]
    assert package(read(project, "pylock.cpu.toml"), "packages", "gitpkg")["vcs"]["commit-id"] == git_repo.second
    # people read the old and the new commit on the update's line
    spec.write_text(spec.read_text().replace(f"@{git_repo.second}", "@v1"))
    result = lock(project)
    assert f"gitpkg 1.0 ({git_repo.second[:12]}) -> 1.0 ({git_repo.first[:12]})" in result.stdout


def test_git_failures_show_git_stderr_and_the_repository(tmp_path, local_index, git_repo):
    project = tmp_path / "project"
    project.mkdir()
    spec = write_spec(project, local_index.url, dependencies=(f"gitpkg @ {git_repo.url}@no-such-tag",))
    result = lock(project, expect=6)
    assert f"git could not fetch {git_repo.url}@no-such-tag" in result.stderr
    assert "git: fatal: couldn't find remote ref refs/tags/no-such-tag" in result.stderr
    assert not (project / "mlenv.lock").exists()

    # an unreachable host: the URL without the credential the environment supplied
    spec.write_text(spec.read_text().replace(f"{git_repo.url}@no-such-tag",
                                             "git+http://${GIT_TOKEN}@127.0.0.1:9/org/repo.git@v1"))
    result = lock(project, expect=6, env={"GIT_TOKEN": "s3cret-token", "GIT_TERMINAL_PROMPT": "0"})
    assert "git could not fetch git+http://127.0.0.1:9/org/repo.git@v1" in result.stderr
    assert "git: fatal: unable to access 'http://127.0.0.1:9/org/repo.git/'" in result.stderr
    assert "s3cret" not in result.stdout + result.stderr


def test_a_local_wheel_is_locked_by_hash_and_a_local_folder_is_refused(tmp_path, local_index, git_repo):
    import hashlib

    wheel = local_index.add("localpkg", "1.0")
    project = tmp_path / "project"
    project.mkdir()
    spec = write_spec(project, local_index.url, dependencies=(f"localpkg @ {wheel.as_uri()}",))
    lock(project)
    entry = package(read(project, "pylock.cpu.toml"), "packages", "localpkg")
    assert entry["wheels"] == [{"url": wheel.as_uri(), "hashes": {"sha256": hashlib.sha256(wheel.read_bytes())
                                                                 .hexdigest()}}]
    assert run_mlenv("sync", cwd=project).returncode == 0

    # a folder has neither a hash nor a commit: refused before anything is built, with the ways out
    spec.write_text(spec.read_text().replace(wheel.as_uri(), git_repo.path.as_uri()))
    result = lock(project, expect=3)
    assert "is a local folder, which has no hash or commit to lock" in result.stderr
    assert "git+file:///path/to/repo@ref" in result.stderr


def test_a_direct_url_keeps_its_credentials_out_of_the_lock(tmp_path, local_index):
    """uv expands ${VAR} in the URL and writes the result into its output: mlenv records it without."""
    wheel = local_index.add("urlpkg", "1.0")
    url = f"http://${{WHEEL_USER}}:${{WHEEL_TOKEN}}@127.0.0.1:{local_index.port}/files/{wheel.name}"
    write_spec(tmp_path, local_index.url, dependencies=(f"urlpkg @ {url}",))  # with a group: both passes run
    env = {"WHEEL_USER": "robot", "WHEEL_TOKEN": "wh33l-secret"}
    result = lock(tmp_path, env=env)
    assert "wh33l-secret" not in result.stdout + result.stderr
    for name in ("mlenv.lock", "pylock.cpu.toml"):
        assert "wh33l-secret" not in (tmp_path / name).read_text(), name
    entry = package(read(tmp_path, "pylock.cpu.toml"), "packages", "urlpkg")
    assert entry["wheels"][0]["url"] == f"http://127.0.0.1:{local_index.port}/files/{wheel.name}"
    lock(tmp_path, "--check", env=env)
    assert run_mlenv("sync", cwd=tmp_path).returncode == 0


class _PrivateGitHandler(SimpleHTTPRequestHandler):
    """git's dumb HTTP protocol over a bare repository, behind HTTP basic authentication."""

    credentials = ""

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        if self.headers.get("Authorization") != "Basic " + base64.b64encode(self.credentials.encode()).decode():
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        super().do_GET()


def test_a_private_repository_takes_credentials_from_the_environment_only(tmp_path, local_index, git_repo):
    bare = tmp_path / "served" / "repo.git"
    subprocess.run(["git", "clone", "--quiet", "--bare", str(git_repo.path), str(bare)], check=True)
    subprocess.run(["git", "update-server-info"], cwd=bare, check=True)
    handler = type("Handler", (_PrivateGitHandler,), {"credentials": "robot:tok-5ecret"})
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(tmp_path / "served")))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        project = tmp_path / "project"
        project.mkdir()
        url = f"git+http://${{GIT_USER}}:${{GIT_TOKEN}}@127.0.0.1:{server.server_address[1]}/repo.git@v1"
        write_spec(project, local_index.url, dependencies=(f"gitpkg @ {url}",))
        env = {"GIT_USER": "robot", "GIT_TOKEN": "tok-5ecret", "GIT_TERMINAL_PROMPT": "0",
               "UV_CACHE_DIR": str(tmp_path / "uv-cache")}  # nothing cached from another test: git must ask
        lock(project, env=env)
        locked = package(read(project, "mlenv.lock"), "package", "gitpkg")["vcs"]
        assert locked["url"] == f"http://127.0.0.1:{server.server_address[1]}/repo.git"
        assert locked["commit-id"] == git_repo.first
        # a fresh uv cache: sync fetches the commit itself, through the recorded credential-free URL
        result = run_mlenv("sync", cwd=project, env={**env, "UV_CACHE_DIR": str(tmp_path / "uv-cache-sync")})
        assert result.returncode == 0, result.stderr
        assert mark(project) == "first"
        written = [path for path in project.rglob("*") if path.is_file() and ".venv" not in path.parts]
        for path in [*written, *(project / ".venv").glob("lib/python*/site-packages/gitpkg-*.dist-info/*")]:
            assert "tok-5ecret" not in path.read_text(errors="replace"), path
            assert "GIT_TOKEN" not in path.read_text(errors="replace") or path.name == "mlenv.toml" or \
                path.name == "mlenv.lock", path  # the spec keeps the placeholder, as do the lock's inputs

        # without the credentials git is refused; the error says where and what git said
        (project / ".venv").rename(project / "old-venv")
        result = run_mlenv("sync", cwd=project, env={**env, "GIT_TOKEN": "", "UV_CACHE_DIR": str(tmp_path / "cold")})
        assert result.returncode == 6, result.stderr
        assert "git could not fetch" in result.stderr and "git: fatal:" in result.stderr
    finally:
        server.shutdown()
        server.server_close()


def test_the_readme_git_dependency_flow(tmp_path, local_index, git_repo):
    """README, `mlenv lock` / git dependencies: the spec line, then its three commands."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### git dependencies"):readme.index("## `mlenv sync`")]
    spec_line = re.search(r'dependencies = \["(mylib @ git\+https://github.com/org/mylib@v1.2)"\]', section).group(1)
    commands = re.findall(r"^\$ (mlenv [^#\n]*?)\s*(?:#.*)?$", section, flags=re.M)
    assert commands == ["mlenv lock", "mlenv sync", "mlenv lock --upgrade-package mylib"]

    # the README's repository, here: the package is called mylib, its branch v1.2 moves on
    (git_repo.path / "pyproject.toml").write_text(
        (git_repo.path / "pyproject.toml").read_text().replace('name = "gitpkg"', 'name = "mylib"'))
    (git_repo.path / "src" / "gitpkg").rename(git_repo.path / "src" / "mylib")
    git_repo.git("add", "-A")
    git_repo.git("commit", "--quiet", "-m", "rename")
    git_repo.git("branch", "v1.2")
    locked_commit = git_repo.git("rev-parse", "v1.2")
    project = tmp_path / "project"
    project.mkdir()
    write_spec(project, local_index.url,
               dependencies=(spec_line.replace("git+https://github.com/org/mylib", git_repo.url),))

    def run(command: str):
        result = run_mlenv(*command.split()[1:], cwd=project)
        assert result.returncode == 0, result.stderr
        return result

    run(commands[0])
    run(commands[1])
    python = project / ".venv" / "bin" / "python"
    assert subprocess.run([python, "-c", "import mylib"], check=False).returncode == 0
    git_repo.git("checkout", "--quiet", "v1.2")
    moved = git_repo.commit("moved on")
    run(commands[0])  # the pin survives
    assert package(read(project, "mlenv.lock"), "package", "mylib")["vcs"]["commit-id"] == locked_commit
    run(commands[2])
    assert package(read(project, "mlenv.lock"), "package", "mylib")["vcs"] == {
        "type": "git", "url": f"file://{git_repo.path}", "requested-revision": "v1.2", "commit-id": moved}


# --- one module, two distributions: read from what is installed ------------------------------------------


def test_sync_and_doctor_report_two_distributions_that_install_one_module(tmp_path, local_index):
    # two distributions the shipped table does not know, shipping the same module
    local_index.add("clash-one", "1.0", module="clashmod")
    local_index.add("clash-two", "1.0", module="clashmod")
    write_spec(tmp_path, local_index.url, dependencies=("tinylib", "clash-one", "clash-two"))
    lock(tmp_path)  # the table cannot know these two
    result = run_mlenv("sync", cwd=tmp_path)
    assert result.returncode == 4, result.stdout + result.stderr
    assert "clash-one and clash-two both install the module 'clashmod'" in result.stderr
    assert "keep one in mlenv.toml (or make them exclusive groups" in result.stderr

    result = run_mlenv("doctor", "--json", cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    findings = [f for f in json.loads(result.stdout)["findings"] if f["check"] == "module"]
    assert [(f["subject"], f["found"], f["severity"]) for f in findings] == [("clashmod", "clash-one, clash-two",
                                                                               "error")]

    # the fix the message gives: keep one, re-lock, sync; then both are clean
    spec = tmp_path / "mlenv.toml"
    spec.write_text(spec.read_text().replace(', "clash-two"', ""))
    lock(tmp_path)
    assert run_mlenv("sync", cwd=tmp_path).returncode == 0
    assert run_mlenv("doctor", cwd=tmp_path).returncode == 0

    # a distribution installed by hand over a locked one's module: the fix is a sync
    from uv import find_uv_bin

    subprocess.run([find_uv_bin(), "pip", "install", "--quiet", "--python", str(tmp_path / ".venv" / "bin" / "python"),
                    "--index-url", local_index.url, "clash-two"], check=True)
    result = run_mlenv("doctor", cwd=tmp_path)
    assert result.returncode == 1
    assert "clash-one and clash-two both install the module 'clashmod'" in result.stdout
    assert "clash-two is not in the lock (fix: `mlenv sync` removes it)" in result.stdout
    assert run_mlenv("sync", cwd=tmp_path).returncode == 0


# --- the URL rules, without the network ---------------------------------------------------------------


@pytest.mark.parametrize(("url", "recorded"), [
    ("https://robot:tok@host/org/repo.git", "https://host/org/repo.git"),
    ("https://ghp_token@host/org/repo.git", "https://host/org/repo.git"),
    ("https://${GIT_USER}:${GIT_TOKEN}@host/org/repo.git", "https://host/org/repo.git"),  # pylocks never expand
    ("ssh://git@host/org/repo.git", "ssh://git@host/org/repo.git"),  # an account name, not a secret
    ("ssh://git:pw@host/org/repo.git", "ssh://git@host/org/repo.git"),  # the password goes
    ("file:///srv/repo", "file:///srv/repo"),
])
def test_the_lock_records_git_urls_without_credentials(url, recorded):
    from mlenv.lock.vcs import from_pylock_entry

    vcs = from_pylock_entry({"vcs": {"type": "git", "url": url, "requested-revision": "v1", "commit-id": "a" * 40}})
    assert vcs is not None and vcs.url == recorded


def test_credentials_reach_git_through_its_environment_only():
    from mlenv.lock.vcs import git_credentials_env

    urls = ["git+https://${GIT_USER}:${GIT_TOKEN}@host/org/private.git@v1", "git+https://host/org/public@v2",
            "https://host/pkg-1.0-py3-none-any.whl"]
    env = git_credentials_env(urls, {"GIT_USER": "robot", "GIT_TOKEN": "t0k", "GIT_CONFIG_COUNT": "1"})
    # after the one configuration entry the user already passes this way
    assert env == {"GIT_CONFIG_KEY_1": "url.https://robot:t0k@host/org/private.git.insteadOf",
                   "GIT_CONFIG_VALUE_1": "https://host/org/private.git", "GIT_CONFIG_COUNT": "2"}
    assert git_credentials_env(urls, {"GIT_USER": "robot"}) == {}  # unset: git asks its credential helper


def test_a_forged_git_record_is_a_corrupt_lock(tmp_path, local_index, git_repo):
    """The digest can be recomputed by whoever edits the lock: the records are still checked on read."""
    from mlenv.errors import LockError
    from mlenv.fsutil import content_digest
    from mlenv.lock.model import Lock

    project = tmp_path / "project"
    project.mkdir()
    write_spec(project, local_index.url, dependencies=(f"gitpkg @ {git_repo.url}@v1",))
    lock(project)
    text = (project / "mlenv.lock").read_text()
    for field, value, problem in (("url", "https://robot:tok@host/repo", "has a credential in it"),
                                  ("commit-id", "v1", "expected a full commit id"),
                                  ("type", "hg", "mlenv locks git repositories only")):
        data = tomllib.loads(text)
        package(data, "package", "gitpkg")["vcs"][field] = value
        del data["lock"]["content-sha256"]
        data["lock"]["content-sha256"] = content_digest(data)
        with pytest.raises(LockError) as caught:
            Lock.loads(tomli_w.dumps(data))
        assert f"].vcs.{field}: {problem}" in caught.value.message, caught.value
        assert "tok" not in str(caught.value)
