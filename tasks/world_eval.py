"""How each built-in world task is evaluated (unified_io.evaluation.specs): what is generated and
which metrics score it against the example's `meta/*` ground truth."""

from unified_io.evaluation.specs import EvalSpec, register_eval

_TEXT_ANSWER = EvalSpec(metrics=("exact_match", "classification_accuracy"))
_SPECS = {
    "caption": EvalSpec(metrics=("exact_match", "bleu", "cider")),
    "vqa_colour": EvalSpec(metrics=("vqa_accuracy",)),
    "vqa_shape": EvalSpec(metrics=("vqa_accuracy",)),
    "vqa_count": EvalSpec(metrics=("vqa_accuracy",)),
    "vqa_position": EvalSpec(metrics=("vqa_accuracy",)),
    "refexp": EvalSpec(metrics=("refexp",), reads="box", max_length=6),
    "detection": EvalSpec(metrics=("detection_ap",), reads="boxes"),
    "text_to_image": EvalSpec(target="image", metrics=("token_accuracy", "image_error")),
    "object_mask": EvalSpec(target="image", metrics=("token_accuracy", "image_error")),
    "video_direction": _TEXT_ANSWER,
    "video_count": _TEXT_ANSWER,
    "audio_caption": EvalSpec(metrics=("exact_match", "bleu", "cider")),
    "audio_qa": _TEXT_ANSWER,
    "text_to_audio": EvalSpec(target="audio", metrics=("token_accuracy", "spectrogram_error")),
    "text_scene_qa": _TEXT_ANSWER,
    "arithmetic": EvalSpec(metrics=("exact_match",)),
}

for _name, _spec in _SPECS.items():
  register_eval(f"world_{_name}", _spec)
