"""The run folder `glmtune train` writes and every later stage reads: its layout and files (`folder`), and the
model it describes, base + what was trained (`load`). No other module opens method.json or config.yaml of a run.
"""
