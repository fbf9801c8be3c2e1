"""mta-lite — a small, durable SMTP relay for home-office networks.

LAN devices hand mail to the box over SMTP or the sendmail command; every message is
queued durably on disk and relayed to the smarthost chosen by its envelope sender.
This package knows nothing of GPIO, serial consoles or USB sticks (see mta_lite_board/).
"""

__version__ = "0.1.0"
