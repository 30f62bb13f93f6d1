"""``thinkfast sample``'s engine flags: continuous batching and shared prompts change no sample;
the sampler is part of a file's settings, so a file is never resumed with the other one."""

from __future__ import annotations

import pytest

from thinkfast.cli import main
from thinkfast.eval.io import read_jsonl

from .conftest import PER_CALL, make_model, make_tokenizer, save_tiny_gsm8k


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("engine_flags")
    model, data = save_tiny_gsm8k(tmp, [{"question": f"question {i} " + "word " * i + "?", "answer": f"#### {i}"}
                                        for i in range(5)])
    argv = ["sample", "--model", str(model), "--task", "gsm8k", "--n", "3", "--data", str(data),
            "--temperature", "1.0", "--max-new-tokens", "12", "--seed", "3", "--batch-problems", "5",
            "--threads", "1", "--device", "cpu"]
    return tmp, argv


def _samples(path):
    return [{k: v for k, v in r.items() if k not in PER_CALL} for r in read_jsonl(path)]


def test_continuous_batching_and_shared_prompts_give_the_reference_samples(base):
    tmp, argv = base
    assert main(argv + ["--out", str(tmp / "ref.jsonl")]) == 0
    assert main(argv + ["--out", str(tmp / "cb.jsonl"), "--continuous", "--max-batch-rows", "4",
                        "--shared-prompt"]) == 0
    ref, cb = _samples(tmp / "ref.jsonl"), _samples(tmp / "cb.jsonl")
    assert len(ref) == 15
    assert len({r["completion"] for r in ref}) > 1  # sampled, not one repeated string
    # Token for token the same; a row's log-probabilities are summed over a differently composed
    # batch (and, shared, an attention merged from two parts), so they agree to float rounding.
    assert [r["logprob_sum"] for r in cb] == pytest.approx([r["logprob_sum"] for r in ref], abs=1e-4)
    strip = [{k: v for k, v in r.items() if k != "logprob_sum"} for r in ref]
    assert [{k: v for k, v in r.items() if k != "logprob_sum"} for r in cb] == strip


def test_the_sampler_is_recorded_and_a_file_is_not_resumed_with_the_other(base, capsys):
    tmp, argv = base
    out = tmp / "cdf.jsonl"
    assert main(argv + ["--out", str(out), "--sampler", "cdf", "--limit", "2"]) == 0
    assert all(r["settings"]["sampler"] == "cdf" for r in read_jsonl(out))
    capsys.readouterr()
    assert main(argv + ["--out", str(out)]) == 2  # the default sampler, gumbel, on a cdf file
    assert "sampler" in capsys.readouterr().err


@pytest.mark.parametrize("extra, says", [
    (["--shared-prompt"], "--continuous"),
    (["--max-batch-rows", "4"], "--continuous"),
    (["--sampler", "cdf", "--backend", "hf"], "--sampler"),
])
def test_engine_flags_out_of_place_are_usage_errors(base, capsys, extra, says):
    tmp, argv = base
    assert main(argv + ["--out", str(tmp / "never.jsonl")] + extra) == 2
    assert says in capsys.readouterr().err
    assert not (tmp / "never.jsonl").exists()


def test_engine_options_reach_the_engine():
    from thinkfast.eval.sampling import SampleSettings
    from thinkfast.inference.backends import engine_generate_fn

    tok = make_tokenizer(chat=True)
    settings = SampleSettings(task="gsm8k", model="tiny", n=3, max_new_tokens=4)
    prompts = [tok.encode("question 1 ?"), tok.encode("question 2 word ?")]
    plain = engine_generate_fn(make_model(), tok, settings, ())(prompts, 0)
    cb = engine_generate_fn(make_model(), tok, settings, (), {"continuous": True, "max_batch_rows": 4})(prompts, 0)
    assert [o.timing["continuous"] for o in plain + cb] == [False] * 2 + [True] * 2
    assert {o.timing["rows_at_once"] for o in cb} == {4}
    with pytest.raises(ValueError, match="unknown engine options"):
        engine_generate_fn(make_model(), tok, settings, (), {"sampler": "cdf"})
