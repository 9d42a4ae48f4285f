"""Finding a test's own processes: each test marks the xfw it starts with a variable of its own (MARKER_VAR), so
that leftovers are looked for only among its processes (other test sessions may run xfw on the same machine)."""

import time

import psutil

MARKER_VAR = "XFW_TEST_MARKER"


def marked(marker: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["pid"]):
        try:
            if p.environ().get(MARKER_VAR) == marker and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.Error:
            continue
    return found


def wait_until(condition, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()
