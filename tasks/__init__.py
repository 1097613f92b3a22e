"""seqio task and mixture registrations. Importing this package registers every task.

Installed as `unified_io.tasks`: `import unified_io.tasks`.
"""

from unified_io.tasks import synthetic_text  # noqa: F401  (registers tasks)
