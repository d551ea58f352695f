"""The step-time benchmark prints the table the issue asks for: one row per method, ratio to joint like 1.52x."""

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_step_time_table_format(capsys):
    import step_time

    assert step_time.main(["--steps", "1", "--rounds", "1", "--warmup", "1",
                           "--methods", "joint,uniform,bogc,bogc-ema,pmr,gblending"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in lines if re.match(r"^(joint|uniform|bogc|pmr|gblending)", line)}
    assert set(rows) == {"joint", "uniform", "bogc", "bogc-ema", "pmr", "gblending"}
    assert re.search(r"\s1\.00x\s", rows["joint"])
    for line in rows.values():
        assert re.search(r"\s\d+\.\d\dx\s", line), line
    assert step_time.main(["--methods", "nope"]) == 2
