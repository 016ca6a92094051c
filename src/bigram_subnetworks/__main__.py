from bigram_subnetworks.cli import main

raise SystemExit(main())
