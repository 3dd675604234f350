"""PII scrubbing: e-mail and IP addresses, phone and card numbers, keys and secrets -> typed placeholders."""
