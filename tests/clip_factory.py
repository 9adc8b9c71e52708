"""Generate CLIP checkpoint folders offline: small seeded ones for tests, full-size ViT-L/14 for timing.

The folders have the same layout as ``openai/clip-vit-large-patch14`` on the Hugging Face Hub
(config.json, model.safetensors, preprocessor_config.json, tokenizer files), with random weights.
A randomly initialised CLIP maps every photo to nearly the same feature because the class token
dominates; ``patch_gain`` scales the patch embedding up so different photos get different features.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

# The real checkpoint's preprocessor_config.json (an old-style feature-extractor config).
OPENAI_PREPROCESSOR = {
    "crop_size": 224,
    "do_center_crop": True,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,
    "size": 224,
}

SMALL = dict(
    vision=dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, patch_size=32, image_size=224
    ),
    text=dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77
    ),
)
VIT_L_14 = dict(
    vision=dict(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        patch_size=14,
        image_size=224,
    ),
    text=dict(
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=77,
    ),
)


def _tokenizer():
    """A byte-level BPE tokenizer with CLIP's special tokens and no merges: every byte is a token."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in sorted(ByteLevel.alphabet()):
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[]), len(vocab)


def make_clip_checkpoint(
    folder: Path,
    size: dict = SMALL,
    projection_dim: int = 768,
    seed: int = 0,
    patch_gain: float = 30.0,
    with_text: bool = True,
) -> Path:
    from transformers import CLIPConfig, CLIPModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer, vocab_size = _tokenizer()
    config = CLIPConfig(
        projection_dim=projection_dim,
        vision_config=dict(size["vision"], projection_dim=projection_dim),
        text_config=dict(
            size["text"],
            projection_dim=projection_dim,
            vocab_size=vocab_size,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        ),
    )
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    with torch.no_grad():
        model.vision_model.embeddings.patch_embedding.weight.mul_(patch_gain)
    model.save_pretrained(folder, safe_serialization=True)
    (folder / "preprocessor_config.json").write_text(json.dumps(OPENAI_PREPROCESSOR, indent=2))
    if with_text:
        tokenizer.save_pretrained(folder)
    return folder
