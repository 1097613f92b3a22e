"""The evaluator on image tasks of the built-in world (boxes read back from location tokens, image
generation scored by tokens and pixels) and the report it feeds; random parameters, tiny sizes."""

import json
import os

import flax.linen as nn
import jax
import numpy as np
import pytest
from PIL import Image

import unified_io.tasks  # noqa: F401  (registers the world)
from unified_io.presets import make_config
from unified_io.data.ops import boxes as box_ops
from unified_io.evaluation import evaluator as evaluator_lib
from unified_io.evaluation import report
from unified_io.model import UnifiedIOModel

LENGTHS = {"text_inputs": 32, "text_targets": 16, "image_input_samples": 64}
TASKS = ["world_refexp", "world_detection", "world_text_to_image", "world_vqa_colour"]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
  cfg = make_config("tiny", input_modalities=("text", "image"),
                    target_modalities=("text", "image"))
  model = UnifiedIOModel(cfg)
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), model.dummy_batch(1, LENGTHS)))
  evaluator = evaluator_lib.Evaluator(model, TASKS, LENGTHS, batch_size=3, max_examples=3,
                                      log=lambda *_: None)
  out = tmp_path_factory.mktemp("eval")
  return evaluator, evaluator.evaluate(params, 7, str(out)), out


def test_every_example_is_scored_and_written(evaluated):
  _, results, out = evaluated
  assert set(results) == set(TASKS)
  for task, result in results.items():
    assert len(result.records) == 3
    rows = [json.loads(l) for l in open(out / f"{task}-7.jsonl")]
    assert [r["index"] for r in rows] == [0, 1, 2]
    assert not any(k.startswith("_") for r in rows for k in r)
  assert 0 <= results["world_refexp"].metrics["acc50"] <= 1
  assert {"ap", "ap50"} <= set(results["world_detection"].metrics)
  image = results["world_text_to_image"]
  assert {"token_accuracy", "pixel_mse", "psnr", "objects_drawn", "object_iou",
          "tokenizer_objects_drawn"} <= set(image.metrics)
  record = image.records[0]
  assert len(record["_output"]["tokens"]) == len(record["_target"]["tokens"]) == 256
  assert (record["_output"]["image"].shape == record["_target"]["image"].shape
          == record["_target"]["reconstruction"].shape == (128, 128, 3))
  saved = json.loads(open(out / "world_text_to_image-7.jsonl").readline())
  assert len(saved["prediction"]) == len(saved["reference"]) == 256  # the tokens


def test_reference_boxes_read_back_exactly_from_their_tokens(evaluated):
  """The ground-truth target's location tokens, read the way predictions are, give back the
  ground-truth box to within one bin: the reading path (tokens -> pixels -> unresize) is right."""
  evaluator, results, _ = evaluated
  data = evaluator.tasks["world_refexp"]
  batch = data.batches[0]
  hw = evaluator.data_config.image_input_size
  for row, example in enumerate(data.examples):
    ids = batch["targets"]["text"]["targets"][row]
    text = evaluator_lib.decode_text(evaluator.vocab, ids)
    assert text == data.targets[row]
    boxes = box_ops.text_to_boxes_np(text, hw)
    np.testing.assert_allclose(boxes[0], example["meta/boxes"][0], atol=max(hw) / 1000 + 1e-3)
    # The task's postprocess_fn reads the target the same way.
    task = evaluator_lib.get_task("world_refexp")
    read = task.postprocess_fn(text, example=example, is_target=False)
    np.testing.assert_allclose(read, example["meta/boxes"][0], atol=max(hw) / 1000 + 1e-3)


def test_report_has_targets_curves_and_a_gallery(evaluated, tmp_path):
  evaluator, results, _ = evaluated
  metrics_path = tmp_path / "metrics.jsonl"
  with open(metrics_path, "w") as f:
    for step, loss in ((1, 9.0), (2, 5.0), (3, 2.0)):
      f.write(json.dumps({"step": step, "loss": loss, "loss/text": loss / 2}) + "\n")
  targets = [report.Target("world_refexp", "acc50", 0.5, "refexp"),
             report.Target("world_vqa_colour", "vqa_accuracy", -1.0, "always met")]
  path = report.write_report(str(tmp_path / "report"), results, evaluator.data_config,
                             str(metrics_path), targets, examples_per_task=2)
  page = open(path).read()
  assert "always met" in page and "met</td>" in page
  assert os.path.getsize(tmp_path / "report" / "loss_curves.png") > 1000
  gallery = open(tmp_path / "report" / "gallery.html").read()
  assert gallery.count("<img") >= 6  # input images, drawn boxes, generated | reference images
  assert "middle: the reference&#x27;s tokens decoded" in gallery
  card = gallery.split("world_text_to_image #0</h3><img src=\"")[1].split("\"")[0]
  with Image.open(tmp_path / "report" / card) as picture:  # generated | decoded | reference
    assert picture.size == (3 * 128, 128)
  assert json.load(open(tmp_path / "report" / "metrics.json"))["world_refexp"]["acc50"] >= 0


def test_report_plots_each_target_at_each_checkpoint(evaluated, tmp_path):
  evaluator, results, _ = evaluated
  earlier = {"world_refexp": evaluator_lib.TaskResult({"acc50": 0.125}, []),
             "world_vqa_colour": evaluator_lib.TaskResult({"vqa_accuracy": 0.375}, [])}
  targets = [report.Target("world_refexp", "acc50", 0.5, "refexp"),
             report.Target("world_vqa_colour", "vqa_accuracy", 0.9, "colour"),
             report.Target("world_caption", "exact_match", 0.5, "not evaluated")]
  path = report.write_report(str(tmp_path / "report"), results, evaluator.data_config,
                             None, targets, examples_per_task=1,
                             curves={3: earlier, 7: results},
                             training_examples=report.training_examples_per_task(
                                 {"world_refexp": 1.5, "world_vqa_colour": 2.5}, 100, 16))
  page = open(path).read()
  # Which task starves: 1.5 / 4 and 2.5 / 4 of 100 batches of 16 (a task not trained: a dash).
  targets_table = page[page.index("<h2>Targets</h2>"):page.index("Held-out metrics at each")]
  assert "<th>training examples</th>" in targets_table
  assert "missed</td><td>600</td></tr>" in targets_table
  assert "</td><td>1,000</td></tr>" in targets_table and "</td><td>—</td></tr>" in targets_table
  section = page[page.index("Held-out metrics at each checkpoint"):]
  assert "<th>step 3</th><th>step 7</th>" in section
  final = results["world_refexp"].metrics["acc50"]
  assert f"<tr><td>refexp</td><td>0.125</td><td>{final:.3f}</td></tr>" in section
  assert "<tr><td>not evaluated</td><td>—</td><td>—</td></tr>" in section
  # (what the main job prints per target: a task never evaluated is missed, not an error)
  assert report.target_status(earlier, targets[0]) == (0.125, False)
  assert report.target_status(results, targets[2]) == (None, False)
  assert report.target_status({"world_refexp": evaluator_lib.TaskResult({"acc50": 0.5}, [])},
                              targets[0]) == (0.5, True)
  assert os.path.getsize(tmp_path / "report" / "target_curves.png") > 1000


def test_input_image_is_rebuilt_from_its_patches(evaluated):
  evaluator, results, _ = evaluated
  record = results["world_vqa_colour"].records[0]
  image = report.input_image(record["_inputs"], evaluator.data_config)
  assert image.shape == (128, 128, 3) and image.dtype == np.uint8
  assert image.std() > 5  # a scene, not a blank


def test_generation_tasks_trained_with_dropped_prompts_are_guided(evaluated):
  """world_text_to_image (trained with 10% null prompts) generates with its registered guidance
  scale unless the decode options set one; text tasks never are."""
  from unified_io import decoding
  from unified_io.data import registry
  from unified_io.tasks import world
  evaluator = evaluated[0]
  image, text = evaluator_lib.Modality.IMAGE, evaluator_lib.Modality.TEXT
  assert registry.inference("world_text_to_image").guidance_scale == world.GUIDANCE_SCALE
  assert evaluator._options("world_text_to_image", image).guidance_scale == world.GUIDANCE_SCALE
  assert evaluator._options("world_refexp", text).guidance_scale == 1.0
  assert registry.inference("world_object_mask").guidance_scale is None  # no null prompts
  own = evaluator_lib.Evaluator(evaluator.model, [], LENGTHS, load=False, log=lambda *_: None,
                                decode_options=decoding.DecodeOptions(guidance_scale=2.0))
  assert own._options("world_text_to_image", image).guidance_scale == 2.0
  with pytest.raises(ValueError, match="guidance_scale must be > 0"):
    registry.Inference(guidance_scale=0.0)
