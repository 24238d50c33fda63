"""The command line and its subcommands; nothing in netmount imports this package."""
