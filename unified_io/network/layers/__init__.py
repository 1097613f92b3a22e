"""The trunk's building blocks: norms, RoPE, attention, MLP and token embeddings."""

from unified_io.network.layers.attention import Attention
from unified_io.network.layers.embedding import TokenEmbedder
from unified_io.network.layers.mlp import GatedMLP
from unified_io.network.layers.norms import RMSNorm
from unified_io.network.layers.rope import apply_rope, rope_table_1d, rope_table_2d

__all__ = ["Attention", "GatedMLP", "RMSNorm", "TokenEmbedder", "apply_rope", "rope_table_1d",
           "rope_table_2d"]
