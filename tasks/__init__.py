"""seqio task and mixture registrations. Importing this package registers every task.

Installed as `unified_io.tasks`: `import unified_io.tasks`.
"""

# Real datasets: registered always, read only when used, from the directories the user configures
# (unified_io.datasets.directories); nothing is downloaded.
from unified_io.tasks import audio_captions  # noqa: F401
from unified_io.tasks import coco  # noqa: F401
from unified_io.tasks import manifest  # noqa: F401  (user JSONL manifests from $UIO2_MANIFEST_TASKS)
from unified_io.tasks import nlp_instructions  # noqa: F401
from unified_io.tasks import refcoco  # noqa: F401
from unified_io.tasks import video_qa  # noqa: F401
from unified_io.tasks import vqa  # noqa: F401
from unified_io.tasks import world  # noqa: F401  (the built-in world: world_* tasks, world_default)
from unified_io.tasks import pretraining  # noqa: F401  (denoising mixtures over real datasets)
