"""The word-level tokenizer: exact round trip on the task's texts, digits and punctuation split,
fixed special ids, deterministic vocabulary, save / load offline."""

import pytest

from thinkfast.data import synthetic as syn
from thinkfast.data.tokenizer import SPACE, build_tokenizer, load_tokenizer, pieces
from thinkfast.eval.tasks.synthetic import SyntheticTask


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(syn.tokenizer_texts())


def _task_texts(n=20):
    task = SyntheticTask()
    out = []
    for e in task.load("test", limit=n):
        out += [task.prompt(e, "fewshot"), task.prompt(e, "plain"), " " + e.gold + "\n\n", e.question]
    return out


def test_round_trip_is_exact_on_task_texts(tok):
    for text in _task_texts():
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.unk_token_id not in ids
        assert tok.decode(ids) == text
        with_bos = tok.encode(text)
        assert with_bos[0] == tok.bos_token_id and with_bos[1:] == ids
        assert tok.decode(with_bos, skip_special_tokens=True) == text


def test_prompt_plus_completion_tokenises_like_the_whole(tok):
    # training concatenates ids of prompt and completion; generation continues the prompt
    task = SyntheticTask()
    for e in task.load("test", limit=5):
        p = task.prompt(e, "fewshot")
        c = " " + e.gold + "\n\n"
        assert tok.encode(p + c, add_special_tokens=False) == \
            tok.encode(p, add_special_tokens=False) + tok.encode(c, add_special_tokens=False)


def test_pieces():
    assert pieces("Ann has 347 apples.") == ["Ann", f"{SPACE}has", f"{SPACE}3", "4", "7", f"{SPACE}apples", "."]
    assert pieces("a = 7 4\n\n#### 12") == ["a", f"{SPACE}=", f"{SPACE}7", f"{SPACE}4", "\n\n", "#", "#", "#", "#",
                                           f"{SPACE}1", "2"]
    assert pieces("x  y \n") == ["x", SPACE, f"{SPACE}y", SPACE, "\n"]
    assert "".join(pieces("Any text, at all: 1+2=3?\tok")).replace(SPACE, " ") == "Any text, at all: 1+2=3?\tok"


def test_special_tokens_and_vocab_order(tok):
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.convert_ids_to_tokens([0, 1, 2, 3]) == ["<pad>", "<bos>", "<eos>", "<unk>"]
    vocab = tok.get_vocab()
    rest = sorted((i, t) for t, i in vocab.items() if i > 3)
    assert [t for _, t in rest] == sorted(t for _, t in rest)
    again = build_tokenizer(list(reversed(syn.tokenizer_texts())))
    assert again.get_vocab() == vocab
    # every digit is its own token, with and without the space before it
    for d in "0123456789":
        assert d in vocab and SPACE + d in vocab
    assert "\n\n" in vocab and "\n" in vocab
    assert tok.encode("\n\n", add_special_tokens=False) == [vocab["\n\n"]]
    assert tok.encode("unknownword", add_special_tokens=False) == [tok.unk_token_id]


def test_build_from_vocab():
    t = build_tokenizer(vocab=["Hi", f"{SPACE}there", ".", f"{SPACE}1", "2"])
    assert len(t) == 4 + 5
    ids = t.encode("Hi there 12.", add_special_tokens=False)
    assert t.decode(ids) == "Hi there 12."
    with pytest.raises(ValueError):
        build_tokenizer()
    with pytest.raises(TypeError):
        build_tokenizer("a single string")


def test_save_and_load_offline(tok, tmp_path):
    from transformers import AutoTokenizer

    tok.save_pretrained(tmp_path / "tok")
    for loaded in (AutoTokenizer.from_pretrained(str(tmp_path / "tok")), load_tokenizer(tmp_path / "tok")):
        assert loaded.get_vocab() == tok.get_vocab()
        assert (loaded.bos_token_id, loaded.eos_token_id, loaded.pad_token_id) == (1, 2, 0)
        for text in _task_texts(5):
            assert loaded.encode(text) == tok.encode(text)
            assert loaded.decode(loaded.encode(text), skip_special_tokens=True) == text


def test_a_directory_without_tokenizer_json_names_the_missing_file(tok, tmp_path):
    from thinkfast.checkpoint import load_tokenizer as load_beside_model
    from thinkfast.data.tokenizer import TokenizerError

    tok.save_pretrained(tmp_path / "t")
    (tmp_path / "t" / "tokenizer.json").unlink()  # tokenizer_config.json alone: transformers would ask for sentencepiece
    for load in (load_tokenizer, load_beside_model):
        with pytest.raises(TokenizerError, match=rf"^{tmp_path / 't'} has no tokenizer.json \(only tokenizer_config.json\)"):
            load(tmp_path / "t")
    (tmp_path / "none").mkdir()
    assert load_beside_model(tmp_path / "none") is None  # a model saved without a tokenizer
    with pytest.raises(TokenizerError, match=r"has no tokenizer.json \(no tokenizer files\)"):
        load_tokenizer(tmp_path / "none")
    with pytest.raises(TokenizerError, match=rf"^{tmp_path / 'missing'} does not exist"):
        load_tokenizer(tmp_path / "missing")


def test_a_corrupt_tokenizer_file_is_named_with_its_line(tok, tmp_path):
    from thinkfast.data.tokenizer import TokenizerError

    tok.save_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0",\n "model": {\n')
    with pytest.raises(TokenizerError, match=rf"^{tmp_path / 'tokenizer.json'}:3: not valid JSON"):
        load_tokenizer(tmp_path)
