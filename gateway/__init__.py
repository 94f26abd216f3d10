"""Network intake only: SMTP/LMTP servers (and later IMAP polling). No business logic here."""
