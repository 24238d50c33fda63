"""Pure building blocks: errors, units, counters, block arithmetic, the safetensors header, settings. Imports nothing else of netmount."""
