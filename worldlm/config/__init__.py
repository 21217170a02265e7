"""The hierarchy config: a typed tree loaded from TOML, its schema and load-time checks, and the
shipped configs (``shipped/*.toml``)."""
