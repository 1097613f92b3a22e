"""Where examples come from: the procedural world, JSONL manifests of the user's own files, and
the directories of real datasets. `tasks/` registers seqio tasks over these sources."""
