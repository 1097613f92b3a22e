"""Evaluation: metrics over decoded predictions and rendering of what the model produced.

  metrics.py          the `METRICS` registry and text / label / token / image / audio metrics
  caption_metrics.py  corpus BLEU-1..4 and CIDEr-D
  box_metrics.py      IoU, referring-expression Acc@0.5, COCO-style detection AP, undoing resizes
  render.py           boxes and masks drawn on images, PNG / WAV / spectrogram files, HTML gallery

Nothing heavy is imported here, so `import unified_io.evaluation.metrics` stays cheap (numpy only).
"""
