"""Training the VQ tokenizers (image VQGAN, audio ViT-VQGAN) on registered data: `uio2-train-tokenizer`."""
