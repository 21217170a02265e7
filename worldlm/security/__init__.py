"""Who may do what: keys and signatures, per-participant credentials and Redis ACLs."""
