"""The `fleetserve` command: thin sub-commands over library functions in each concern's package."""
