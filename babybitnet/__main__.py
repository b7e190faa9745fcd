from babybitnet.cli import main

raise SystemExit(main())
