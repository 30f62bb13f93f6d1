"""JSONL loading, formatting, packing, the held-out split and the resumable batch order."""

from __future__ import annotations

import json

import pytest
import torch

from thinkfast.data.dataset import BatchSchedule, DataConfig, held_out_split, load_data
from thinkfast.data.formatting import Formatted, Formatter
from thinkfast.data.jsonl import DataError, read_jsonl
from thinkfast.data.packing import IGNORE, pack, pad_each


def word_tokenizer(chat_template=None):
    """A whitespace word-level PreTrainedTokenizerFast over a tiny vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<bos>", "<eos>", "<unk>", "Question:", "Answer:", "two", "plus", "is", "four", "user",
             "assistant", "|", "hi", "hello"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>")
    if chat_template:
        fast.chat_template = chat_template
    return fast


def test_malformed_row_is_named_by_file_and_line(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"text": "ok"}\n\n{"text": "fine"}\n{"text": oops}\n')
    with pytest.raises(DataError, match=rf"{f}:4: malformed JSON"):
        read_jsonl(f)
    f.write_text('{"text": "ok"}\n[1, 2]\n')
    with pytest.raises(DataError, match=rf"{f}:2: expected a JSON object"):
        read_jsonl(f)
    f.write_text('{"prompt_ids": [1], "response_ids": [2, "x"]}\n')
    with pytest.raises(DataError, match=rf"{f}:1: 'response_ids' must be a list"):
        load_data(DataConfig(train=str(f), eval_fraction=0.0))
    f.write_text('{"input_ids": [1, 2, 99]}\n')
    with pytest.raises(DataError, match=rf"{f}:1: token id 99 is outside the model's vocabulary \(50\)"):
        load_data(DataConfig(train=str(f), eval_fraction=0.0), vocab_size=50)


def test_packing_shifts_labels_and_masks_prompts():
    ex = [Formatted([1, 10], [11, 12, 2]), Formatted([1, 20], [21, 2])]
    b = pack(ex, seq_len=4, pad_id=0, loss_on="response")
    # stream: 1 10 11 12 2 | 1 20 21 2  (9 tokens, 8 targets) -> 2 windows of 5 overlapping by 1
    assert b.input_ids.tolist() == [[1, 10, 11, 12], [2, 1, 20, 21]]
    assert b.labels.tolist() == [[IGNORE, 11, 12, 2], [IGNORE, IGNORE, 21, 2]]
    assert bool(b.valid.all())
    tail = pack(ex + [Formatted([], [30])], seq_len=4)  # 10 tokens: the last window is padded
    assert tail.input_ids[2].tolist() == [2, 30, 0, 0] and tail.labels[2].tolist() == [30, IGNORE, IGNORE, IGNORE]
    assert tail.valid[2].tolist() == [True, True, False, False]
    everything = pack(ex, seq_len=4, loss_on="all")
    assert everything.labels[0].tolist() == [10, 11, 12, 2]
    padded, truncated = pad_each(ex, seq_len=3)
    assert padded.input_ids.tolist() == [[1, 10, 11], [1, 20, 21]]
    assert padded.labels.tolist() == [[IGNORE, 11, 12], [IGNORE, 21, 2]]
    assert truncated == 1


def test_text_rows_templates_and_chat_template():
    tok = word_tokenizer()
    rows = [("f:1", {"question": "two plus two", "answer": "is four"})]
    [ex] = Formatter(tok, prompt_template="Question: {question} Answer:", response_template="{answer}")(rows)
    ids = tok.convert_tokens_to_ids
    assert ex.prompt == ids(["<bos>", "Question:", "two", "plus", "two", "Answer:"])
    assert ex.response == ids(["is", "four", "<eos>"])
    with pytest.raises(DataError, match="f:1: the template needs field 'missing'"):
        Formatter(tok, prompt_template="{missing}", response_template="{answer}")(rows)
    chat = ("{% for m in messages %}{{ m['role'] }} | {{ m['content'] }} {% endfor %}"
            "{% if add_generation_prompt %}assistant | {% endif %}")
    tok_chat = word_tokenizer(chat)
    [ex] = Formatter(tok_chat)([("f:1", {"messages": [{"role": "user", "content": "hi"},
                                                       {"role": "assistant", "content": "hello"}]})])
    assert ex.prompt == ids(["<bos>", "user", "|", "hi", "assistant", "|"])
    assert ex.response == ids(["hello", "<eos>"])
    with pytest.raises(DataError, match="needs a tokenizer"):
        Formatter(None)(rows)


def test_held_out_split_is_deterministic_and_disjoint():
    tr, ev = held_out_split(20, 0.1, seed=3)
    assert len(ev) == 2 and not set(tr) & set(ev) and sorted(tr + ev) == list(range(20))
    assert held_out_split(20, 0.1, seed=3) == (tr, ev)
    assert held_out_split(20, 0.1, seed=4) != (tr, ev)


def test_batch_order_is_a_function_of_the_step_and_shards_cover_the_global_batch():
    s = BatchSchedule(n_blocks=10, global_batch=4, seed=0)
    first = [s.global_indices(k) for k in range(5)]  # 20 samples = 2 epochs
    assert sorted(sum(first[:2], []) + first[2][:2]) == list(range(10))  # epoch 0 is a permutation
    again = BatchSchedule(10, 4, 0)
    assert again.global_indices(3) == first[3]  # resuming at step 3 needs no history
    shards = [s.micro_batches(3, r, 2, 1) for r in range(2)]
    assert sum(sum(shards, []), []) == first[3]
    assert s.micro_batches(3, 0, 1, 2) == [first[3][:2], first[3][2:]]


def test_load_data_splits_and_counts(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text("".join(json.dumps({"prompt_ids": [1, 5], "response_ids": [6, 7, 2]}) + "\n" for _ in range(10)))
    bundle = load_data(DataConfig(train=str(f), seq_len=8, eval_fraction=0.2))
    assert bundle.stats["train_examples"] == 8 and bundle.stats["eval_examples"] == 2
    assert bundle.train.n_loss_tokens == 8 * 3 - 0  # every response token is a target
    assert bundle.eval is not None and len(bundle.eval) >= 1
    assert torch.equal(load_data(DataConfig(train=str(f), seq_len=8, eval_fraction=0.2)).train.input_ids,
                       bundle.train.input_ids)
