from bulkbackup.cli import main

raise SystemExit(main())
