"""``python -m fastimg``: the same command line as the ``fastimg`` console script."""
from fastimg.cli import main

raise SystemExit(main())
