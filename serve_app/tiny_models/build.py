"""Build the tiny Mistral-style dense and Mixtral-style MoE models with no network.

The tokenizer is a byte-level BPE trained on the Python standard library's own sources (always
on disk), wrapped in PreTrainedTokenizerFast with a chat template; weights are random (seeded)
and saved as bf16 safetensors. Random weights produce random text: benchmarks fix max_tokens
and set ignore_eos.
"""

from __future__ import annotations

import json
import os
import shutil
import sysconfig
import tempfile
from pathlib import Path

from serve_app.schema import TINY_SPECS, tiny_model_dir

__all__ = ["build_tiny_model", "ensure_tiny_model", "CHAT_TEMPLATE"]

SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['content'] is string %}{% set text = message['content'] %}"
    "{% else %}{% set text = message['content'] | map(attribute='text') | join('') %}{% endif %}"
    "<|{{ message['role'] }}|>\n{{ text }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
_MARKER = ".fleetserve-tiny.json"  # written last: a dir without it is a half-built model


def _corpus(limit_bytes: int = 4_000_000) -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    texts, total = [], 0
    for f in sorted(root.glob("*.py")):
        t = f.read_text(errors="ignore")
        texts.append(t)
        total += len(t)
        if total > limit_bytes:
            break
    return texts


def _train_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_model(kind: str, out_dir: str | os.PathLike | None = None, *, seed: int = 0) -> Path:
    """Build tiny model `kind` ("dense" or "moe") into `out_dir` (default: the cache) and return it.

    Writes to a temp dir and renames, so a crash never leaves a half-built model in place.
    """
    import torch
    import transformers

    if kind not in TINY_SPECS:
        raise ValueError(f"unknown tiny model kind {kind!r}; use one of {sorted(TINY_SPECS)}")
    arch, spec = TINY_SPECS[kind]
    out = Path(out_dir) if out_dir else tiny_model_dir(kind)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        tokenizer = _train_tokenizer(spec["vocab_size"])
        tokenizer.save_pretrained(tmp)
        cfg_cls = getattr(transformers, arch.replace("ForCausalLM", "Config"))
        cfg = cfg_cls(**{k: v for k, v in spec.items() if k != "model_type"}, torch_dtype="bfloat16")
        torch.manual_seed(seed)
        model = getattr(transformers, arch)(cfg).to(torch.bfloat16)
        model.save_pretrained(tmp, safe_serialization=True)
        model.generation_config.save_pretrained(tmp)
        (tmp / _MARKER).write_text(json.dumps({"kind": kind, "seed": seed, "architecture": arch}))
        if out.exists():
            shutil.rmtree(out)
        tmp.chmod(0o755)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def ensure_tiny_model(kind: str) -> Path:
    """Return the cached tiny model dir, building it first when missing or half-built."""
    out = tiny_model_dir(kind)
    if not (out / _MARKER).is_file():
        build_tiny_model(kind, out)
    return out
