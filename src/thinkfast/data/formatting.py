"""Rows -> (prompt tokens, response tokens).

A row is one of
  {"input_ids": [...], "loss_mask": [0/1...]?}          token ids (no tokenizer needed)
  {"prompt_ids": [...], "response_ids": [...]}           token ids, prompt and response
  {"messages": [{"role": ..., "content": ...}, ...]}     chat; the last message is the response
  {"prompt": ..., "response" | "completion": ...}        text pair
  {"question": ..., "answer": ...}                       GSM8K-style text pair
  {"text": ...}                                          plain text (all of it is "response")
or anything else when ``prompt_template``/``response_template`` (``str.format`` over the row's
fields) are given. With a tokenizer that has a chat template (and ``chat_template`` not
"never"), text pairs and chats are rendered through it. The loss later goes on response tokens
(SFT) or on every token (pretraining); that choice is the packer's, not made here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from .jsonl import DataError

DEFAULT_TEMPLATES = {
    "question_answer": ("Question: {question}\nAnswer:", " {answer}"),
    "prompt_response": ("{prompt}", "{response}"),
    "prompt_completion": ("{prompt}", "{completion}"),
    "text": ("", "{text}"),
}


@dataclass
class Formatted:
    """One example in tokens: ``prompt`` gets no loss under loss_on=response."""

    prompt: list[int]
    response: list[int]


def detect_format(row: dict[str, Any]) -> str:
    if "input_ids" in row:
        return "tokens"
    if "prompt_ids" in row and "response_ids" in row:
        return "token_pair"
    if "messages" in row:
        return "chat"
    if "prompt" in row and "response" in row:
        return "prompt_response"
    if "prompt" in row and "completion" in row:
        return "prompt_completion"
    if "question" in row and "answer" in row:
        return "question_answer"
    if "text" in row:
        return "text"
    raise DataError(f"cannot tell the format of a row with keys {sorted(row)}; give data.format or "
                    f"data.prompt_template / data.response_template")


def _ids(value: Any, where: str, field: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0
                                              for t in value):
        raise DataError(f"{where}: '{field}' must be a list of non-negative integer token ids")
    return value


def _token_row(row: dict[str, Any], fmt: str, where: str) -> Formatted:
    if fmt == "token_pair":
        return Formatted(_ids(row["prompt_ids"], where, "prompt_ids"), _ids(row["response_ids"], where, "response_ids"))
    ids = _ids(row.get("input_ids"), where, "input_ids")
    mask = row.get("loss_mask")
    if mask is None:
        return Formatted([], ids)
    if not isinstance(mask, list) or len(mask) != len(ids) or any(m not in (0, 1) for m in mask):
        raise DataError(f"{where}: 'loss_mask' must be a 0/1 list as long as 'input_ids'")
    # Prompt = the tokens before the first counted one; a mask with holes is not a prompt/response split.
    first = mask.index(1) if 1 in mask else len(mask)
    if any(m == 0 for m in mask[first:]):
        raise DataError(f"{where}: 'loss_mask' must be 0...0 1...1 (one prompt, then one response)")
    return Formatted(ids[:first], ids[first:])


class Formatter:
    """Turns rows into ``Formatted`` token lists with one tokenizer and one set of templates."""

    def __init__(self, tokenizer: Any = None, fmt: str = "auto", prompt_template: Optional[str] = None,
                 response_template: Optional[str] = None, chat_template: str = "auto",
                 add_bos: bool = True, add_eos: bool = True):
        self.tok, self.fmt = tokenizer, fmt
        self.templates = (prompt_template, response_template)
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if chat_template == "always" and not has_template:
            raise DataError("data.chat_template is 'always' but the tokenizer has no chat template")
        self.use_chat = has_template and chat_template != "never"
        self.bos = getattr(tokenizer, "bos_token_id", None) if add_bos else None
        self.eos = getattr(tokenizer, "eos_token_id", None) if add_eos else None

    def _texts(self, row: dict[str, Any], fmt: str, where: str) -> tuple[str, str]:
        """(prompt text, response text) of a text row."""
        if fmt == "chat":
            return self._chat(row.get("messages"), where)
        pt, rt = self.templates
        if pt is None or rt is None:
            if fmt not in DEFAULT_TEMPLATES:
                raise DataError(f"{where}: format {fmt!r} needs data.prompt_template and data.response_template")
            pt = DEFAULT_TEMPLATES[fmt][0] if pt is None else pt
            rt = DEFAULT_TEMPLATES[fmt][1] if rt is None else rt
        try:
            prompt, response = pt.format(**row), rt.format(**row)
        except (KeyError, IndexError) as e:
            raise DataError(f"{where}: the template needs field {e} which this row lacks") from None
        if self.use_chat and fmt != "text":
            return self._chat([{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], where)
        return prompt, response

    def _chat(self, messages: Any, where: str) -> tuple[str, str]:
        if (not isinstance(messages, list) or len(messages) < 2
                or not all(isinstance(m, dict) and "role" in m and "content" in m for m in messages)):
            raise DataError(f"{where}: 'messages' must be a list of at least two {{role, content}} objects")
        if messages[-1]["role"] != "assistant":
            raise DataError(f"{where}: the last message must be the assistant's (it is what is trained)")
        if not self.use_chat:
            # No template: a plain "role: content" transcript.
            prompt = "".join(f"{m['role']}: {m['content']}\n" for m in messages[:-1]) + "assistant:"
            return prompt, " " + messages[-1]["content"]
        prompt = self.tok.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        full = self.tok.apply_chat_template(messages, tokenize=False)
        if not full.startswith(prompt):
            raise DataError(f"{where}: the chat template does not render the conversation as prompt + reply")
        return prompt, full[len(prompt):]

    def __call__(self, rows: list[tuple[str, dict[str, Any]]]) -> list[Formatted]:
        out: list[Optional[Formatted]] = []
        pending: list[tuple[int, str, str]] = []  # (index, prompt text, response text)
        for where, row in rows:
            fmt = detect_format(row) if self.fmt == "auto" else self.fmt
            if fmt in ("tokens", "token_pair"):
                out.append(_token_row(row, fmt, where))
                continue
            if self.tok is None:
                raise DataError(f"{where}: text data needs a tokenizer (none was found beside the "
                                f"teacher; set tokenizer=PATH)")
            p, r = self._texts(row, fmt, where)
            pending.append((len(out), p, r))
            out.append(None)
        if pending:
            # One batched call per side: the fast tokenizer parallelises it.
            enc = lambda texts: self.tok(texts, add_special_tokens=False)["input_ids"]  # noqa: E731
            prompts, responses = enc([p for _, p, _ in pending]), enc([r for _, _, r in pending])
            bos_text = getattr(self.tok, "bos_token", None)
            for (i, ptext, _), p, r in zip(pending, prompts, responses):
                if self.bos is not None and not (bos_text and ptext.startswith(bos_text)):
                    p = [self.bos] + p
                if self.eos is not None:
                    r = r + [self.eos]
                out[i] = Formatted(p, r)
        return out  # type: ignore[return-value]
