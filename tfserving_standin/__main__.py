"""``python -m tfserving_standin`` accepts tensorflow_model_server's own flags."""

import sys

from tfserving_standin.server import main

if __name__ == "__main__":
    sys.exit(main())
