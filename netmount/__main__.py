import sys

from netmount.commands.cli import main

sys.exit(main())
