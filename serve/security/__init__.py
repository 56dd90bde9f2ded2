"""Who may call what (bearer tokens), TLS from certificate files, and the audit log of model changes."""
