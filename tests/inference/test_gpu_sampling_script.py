"""benchmarks/gpu/sampling_check.py runs on a CPU in its tiny smoke mode and writes its JSON."""

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu" / "sampling_check.py"


def test_sampling_check_smoke_on_cpu(tmp_path):
    spec = importlib.util.spec_from_file_location("sampling_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "smoke.json"
    mod.main(["--device", "cpu", "--tiny", "--out", str(out)])
    res = json.loads(out.read_text())
    assert set(res["models"]) == {"teacher", "hybrid", "llamba"} and not res["skipped"]
    for name, rec in res["models"].items():
        modes = {"reference", "continuous"} | ({"continuous+shared"} if name != "llamba" else set())
        assert modes <= set(rec)
        for m in modes:
            assert rec[m]["new_tokens"] > 0 and rec[m]["tokens_per_s"] > 0
            assert rec[m]["same_tokens_as_reference"]  # float32 on a CPU: the exactness holds
    assert {"temperature/gumbel_ms", "temperature/cdf_ms"} <= set(res["sampler"])
