"""config — the configuration: its schema, loading and validation, how it is shown, the
secret-free view the receiving side gets, and the generations an installed config keeps.

    schema       every table as a frozen dataclass; Secret; durations
    load         read and validate a file (one ConfigError naming file, key and value)
    senders      [[senders]], [users] and [rewrite]; postscreen  [postscreen]
    public       what the master learns from short-lived processes that may read secrets
    generations  config apply / rollback / generations (C1, C2); secrets  password files
"""
