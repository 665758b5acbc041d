"""The self-test behind ``bay broker check``: drives any broker through ``servicebay.client``."""
