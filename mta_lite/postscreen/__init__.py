"""postscreen — the stage in front of the SMTP engine (Postfix runs it as its own program):
access list, pregreet trap, DNSBL scoring, the pass cache, and a small engine that answers
clients it turned away. It hands a passed client to smtpd; smtpd never imports it."""
