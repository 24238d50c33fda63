"""The shared cache tier: an nginx in front of a Hub endpoint, configured and run by netmount.

``nginx_config`` turns options into an nginx config (pure, unit-tested); ``server`` starts,
waits for, and stops the system's ``nginx`` with it.  This package imports only
``netmount.core``.
"""
