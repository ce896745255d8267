from fz_trio.cli import main

raise SystemExit(main())
