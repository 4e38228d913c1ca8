"""pytest plugin: registers dlmbench's ``slow`` and ``gpu`` markers and options."""
