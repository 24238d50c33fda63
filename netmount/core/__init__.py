"""Building blocks: errors, units, counters, block and range arithmetic, the safetensors header,
settings, our subprocesses. Imports nothing else of netmount."""
