"""Media ops for task preprocessors: images and boxes, location tokens, audio, video.

  image.py   decode, resize-and-pad (+ augmentation) with a validity mask, box transforms, CLIP norm
  boxes.py   boxes / points <-> location tokens `<extra_id_{200+q}>` (1000 bins), tf and numpy
  audio.py   16 kHz mono waveforms, 4.08 s segments, the release's log-mel spectrogram, Griffin-Lim
  video.py   evenly spaced frames + one audio segment per frame slot, via PyAV
"""
