"""Sharded inference in two processes (jax.distributed on 127.0.0.1, gloo, 4 CPU devices each):
uio2-predict over a (data=4, model=2) mesh prints what one process on one device prints, and only
process 0 prints. The data axis spans the processes: each supplies and holds 2 of the 4 rows
(the example repeated), and the answer is gathered."""

import sys

from processes import distributed_flags, free_port, run_processes
from test_sharded_inference import PROMPT, write_initialised_run
from unified_io.cli import predict


def _answer(stdout: str) -> str:
  """stdout without gloo's connection lines (printed by its C++ code, on stdout)."""
  return "".join(line for line in stdout.splitlines(keepends=True)
                 if not line.startswith("[Gloo]"))


def test_two_processes_predict_what_one_process_predicts(tmp_path, capsys):
  model_dir = write_initialised_run(str(tmp_path))
  assert predict.main(["--checkpoint", model_dir, *PROMPT]) == 0
  one_process = capsys.readouterr().out
  cmd = [sys.executable, "-m", "unified_io.cli.predict", "--checkpoint", model_dir, *PROMPT,
         "--model_parallel", "2"]
  address = f"127.0.0.1:{free_port()}"
  codes, stdouts, stderrs = run_processes(
      [cmd + distributed_flags(address, 2, i) for i in range(2)], devices_per_process=4,
      timeout_s=300)
  assert codes == [0, 0], "\n----\n".join(err[-3000:] for err in stderrs)
  assert one_process.strip()
  assert [_answer(out) for out in stdouts] == [one_process, ""]
