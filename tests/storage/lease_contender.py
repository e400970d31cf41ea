"""One contender of tests/storage/test_lease_races.py: ROUNDS times, a short-lived child of this process tries to
lease one of KEYS leases in FOLDER (a lease of SECONDS); one that gets it checks it is the only holder by
creating `<key>.holder` exclusively, holds it a moment (often longer than the lease), removes the marker and
then either releases the lease or dies holding it, so that the others must take it over.

Prints one line: `acquired A died D double B stolen S errors E`: B the times the marker already existed (two
holders), S the times a holder found its lock file removed or replaced by the end of its hold, E the children
that raised (their tracebacks go to stderr).

    python lease_contender.py FOLDER KEYS ROUNDS SECONDS SEED
"""

import json
import os
import random
import sys
import time
import traceback
from pathlib import Path

from kt_dropout.storage.locks import Lock, LockHeld

DIES = 0.3  # the share of holders that die holding their lease


def hold(folder: Path, key: str, seconds: float, rng: random.Random) -> str:
    """One child's life: "held", "died" (exits at once, holding), "double" (the marker was there), "stolen" (its
    lock file was removed or replaced while it held it), or "busy" when another holds it."""
    lock = Lock(folder / key, f"the run {key}", seconds=seconds)
    try:
        lock.acquire()
    except LockHeld:
        return "busy"
    marker = folder / f"{key}.holder"
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return "double"
    os.close(fd)
    time.sleep(rng.uniform(0, 2 * seconds))  # a holder stalled past its lease still holds it (same host, alive)
    stolen = not mine(lock.path)
    os.unlink(marker)
    if stolen:
        return "stolen"
    if rng.random() < DIES:
        return "died"  # the lease is left behind, with this child's pid
    lock.release()
    return "held"


def mine(path: Path) -> bool:
    """Whether the lock file at `path` is still this process's: nobody removed or replaced it while held."""
    try:
        return json.loads(path.read_text())["pid"] == os.getpid()
    except FileNotFoundError:
        return False


def main(folder: str, keys: str, rounds: str, seconds: str, seed: str) -> None:
    rng = random.Random(int(seed))
    counts = {"held": 0, "died": 0, "double": 0, "stolen": 0, "busy": 0, "errors": 0}
    outcomes = {name: code for code, name in enumerate(counts)}
    for _ in range(int(rounds)):
        key = f"key{rng.randrange(int(keys))}"
        child_seed = rng.random()
        pid = os.fork()
        if pid == 0:  # the child never returns into this loop
            code = outcomes["errors"]
            try:
                code = outcomes[hold(Path(folder), key, float(seconds), random.Random(child_seed))]
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        counts[list(counts)[os.waitstatus_to_exitcode(status)]] += 1
    print(f"acquired {counts['held'] + counts['died']} died {counts['died']} double {counts['double']} "
          f"stolen {counts['stolen']} errors {counts['errors']}", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
