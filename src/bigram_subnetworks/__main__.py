from bigram_subnetworks.cli import console_main

raise SystemExit(console_main())
