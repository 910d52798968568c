"""Import numpy (and scikit-learn's OpenMP, if asked) only now, then report this process."""

import json
import sys

import numpy as np

if "sklearn" in sys.argv[1:]:
    import sklearn.cluster  # noqa: F401  (loads GNU OpenMP after the runner started)

from pinbackend.diagnostics import process_report

np.ones((200, 200)) @ np.ones((200, 200))
print(json.dumps(process_report()))
