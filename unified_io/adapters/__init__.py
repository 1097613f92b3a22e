"""Fine-tuning adapters over a frozen base model: `lora` (low-rank updates of chosen kernels,
merged into the weights functionally) and `int8` (a quantised frozen base to put them on)."""
