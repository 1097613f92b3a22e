"""Evaluation: metrics over decoded predictions and rendering of what the model produced.

  evaluator.py        a model on seqio tasks: generate (or score options), postprocess, metric_fns
  postprocessors.py   seqio postprocess_fns: answers, VQA answers, captions, boxes, detections, media
  metric_fns.py       seqio metric_fns (targets, predictions) over the definitions below
  metrics.py          text / label / token / image / audio metric definitions
  caption_metrics.py  corpus BLEU-1..4 and CIDEr-D
  box_metrics.py      IoU, referring-expression Acc@0.5, COCO-style detection AP, undoing resizes
  render.py           boxes and masks drawn on images, PNG / WAV / spectrogram files, HTML gallery

  runs.py             uio2-eval / uio2-infer (gin `evaluate`, `infer`); run_loader.py a MODEL_DIR;
  sharded_inference.py the mesh eval / infer / predict run on; report.py the run report

Nothing heavy is imported here, so `import unified_io.evaluation.metrics` stays cheap (numpy only).
"""
