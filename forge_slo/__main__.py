from forge_slo.cli import main

raise SystemExit(main())
