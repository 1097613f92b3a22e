"""One process of a multi-process sharded-inference check (tests/test_multiprocess_inference.py):

  python tests/sharded_inference_worker.py --run MODEL_DIR --out p0.npz --model_parallel 2 \
    --coordinator_address=127.0.0.1:PORT --num_processes=2 --process_id=0 --cpu_collectives=gloo

Joins the processes (`gin_flags.initialize_distributed`), restores the run onto an
`inference_mesh(model_parallel)` over every process's devices, takes this process's rows of
`test_sharded_inference.text_batch` and writes to --out (npz): its rows (`start`, `stop`), the
greedy tokens of its rows (`own`) and of every row (`gathered`), its rows' teacher-forced losses
(`losses`) and every row's option scores (`scores`).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from unified_io.cli import gin_flags  # noqa: E402  (no JAX backend touched before it is set up)


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--run", required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--model_parallel", type=int, default=1)
  gin_flags.add_distributed_flags(parser)
  args = parser.parse_args()
  gin_flags.initialize_distributed(args)

  import numpy as np

  from test_sharded_inference import BATCH, GREEDY, text_batch
  from unified_io.evaluation import sharded_inference as si

  mesh = si.inference_mesh(model_parallel=args.model_parallel)
  run = mesh.load_run(args.run)
  batch, options = text_batch(run.model.cfg.trunk.text_vocab_size)
  rows = mesh.process_rows(BATCH)
  local = mesh.local_rows(batch)
  own = si.generate_global(mesh, run.model, run.params, local["inputs"], "text", GREEDY)
  gathered = si.generate_global(mesh, run.model, run.params, local["inputs"], "text", GREEDY,
                                gather=True)
  losses = si.example_losses_global(mesh, run.model, run.params, local)
  scores = si.score_options_global(mesh, run.model, run.params, local["inputs"],
                                   mesh.local_rows(options), gather=True)
  np.savez(args.out, start=rows.start, stop=rows.stop, own=own.tokens,
           gathered=gathered.tokens, losses=losses, scores=scores)
  return 0


if __name__ == "__main__":
  sys.exit(main())
