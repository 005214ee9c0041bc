import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

NOTEBOOK_SECONDS = {}  # test_notebooks.py fills it; the summary prints it (the limit is 5 minutes each)


def pytest_terminal_summary(terminalreporter):
    if NOTEBOOK_SECONDS:
        terminalreporter.write_line("notebooks executed (seconds, including the small models they train): " + ", ".join(
            f"{name} {s:.0f}" for name, s in NOTEBOOK_SECONDS.items()))
