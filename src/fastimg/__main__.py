from fastimg.cli import main

raise SystemExit(main())
