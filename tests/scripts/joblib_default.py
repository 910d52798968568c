"""Plain joblib calls, as scikit-learn makes them: n_jobs=None and n_jobs=-1."""

import json
import time

from joblib import Parallel, delayed
from joblib.parallel import get_active_backend

from pinbackend.diagnostics import process_report


def task(delay):
    time.sleep(delay)
    return process_report()


if __name__ == "__main__":
    backend, _ = get_active_backend()
    inline = Parallel()(delayed(task)(0) for _ in range(2))
    parallel = Parallel(n_jobs=-1)(delayed(task)(0.3) for _ in range(6))
    print(json.dumps({"backend": type(backend).__name__, "inline": inline, "parallel": parallel}))
