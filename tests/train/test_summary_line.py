"""`glmtune train` whose run ends before the first logged loss (train.logging_steps > steps, as the official
ChatGLM3 configs' logging_steps 10 on a short run) still exits 0 and says so, instead of a traceback after
training succeeded."""

import os
import subprocess
import sys


def test_short_run_without_a_logged_loss_reports_cleanly(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "好"}]}\n' * 4,
                    encoding="utf-8")
    p = subprocess.run([sys.executable, "-m", "glmtune", "train", f"data.train={data}", "data.val_size=0",
                        f"train.output_dir={tmp_path / 'run'}", "train.max_steps=1", "train.logging_steps=10",
                        "plan.strict=false"], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    assert "Traceback" not in p.stderr
    assert "steps 1, loss not logged (train.logging_steps 10 > 1 steps)" in p.stdout
