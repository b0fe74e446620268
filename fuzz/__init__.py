"""The fuzzing harness (run.py, kill.py): importable by the tests as fuzz.harness / fuzz.kill."""
