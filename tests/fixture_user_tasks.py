"""A user's task module, as a training gin imports it (`import fixture_user_tasks`, this folder on
PYTHONPATH): registers the mixture `user_world_sums` (the arithmetic world task under the user's
own name). tests/test_eval_binary.py trains with it imported: the run's run-config.json names it
among its task modules, and an evaluation imports it. (The binaries import `unified_io.tasks`,
which registers the world tasks, before they parse gin.)"""

from unified_io.data import registry

registry.add_mixture("user_world_sums", ["world_arithmetic"], default_rate=1.0, replace=True)
