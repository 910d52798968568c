"""python -m probepkg: report how this module was started, like probe.py."""

import json
import sys

if __name__ == "__main__":
    spec = sys.modules["__main__"].__spec__
    print(
        json.dumps(
            {
                "argv": sys.argv,
                "path": sys.path,
                "name": __name__,
                "file": __file__,
                "spec": spec.name if spec is not None else None,
                "package": __package__,
            }
        )
    )
    sys.exit(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
