from ckptlab.cli import main

raise SystemExit(main())
