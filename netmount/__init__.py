"""netmount: a Hugging Face model repository as lazy, read-only local files."""
