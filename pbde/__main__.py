from pbde.cli import main

raise SystemExit(main())
