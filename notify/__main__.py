"""`python -m notify`: a notifier on its own (planner, worker and tick), until SIGTERM."""

from notify.service import main

raise SystemExit(main())
