# What a board runs at start-up: the boot selector (boot.py), which starts the app of the
# confirmed slot, of a slot under test, or the base firmware's (app.py). The unix-sim
# board runs `micropython -m boot` directly.
import boot  # noqa: F401 (it runs on import)
