from qlab.cli import main

raise SystemExit(main())
