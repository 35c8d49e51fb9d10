from qtraderd.cli import main

raise SystemExit(main())
