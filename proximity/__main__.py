from proximity.cli.main import main

raise SystemExit(main())
