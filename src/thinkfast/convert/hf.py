"""Old home of the Llama converter, now ``convert.llama``. Kept only for ``bench/throughput.py``,
which still imports ``to_hf_state_dict`` from here; remove this file once that import says
``..convert.llama``."""

from __future__ import annotations

from .llama import to_hf_state_dict

__all__ = ["to_hf_state_dict"]
