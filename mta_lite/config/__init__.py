"""config — the configuration: its schema, loading and validation, how it is shown, the
secret-free view the receiving side gets, and the generations an installed config keeps.

    schema       every key once, on the frozen dataclasses the code runs on; route_for()
    keys         what a key is (kind, default, checks) and the reader of one TOML table
    tables       read a table into a dataclass and show one back, from the declared keys
    senders      the kinds and checks of [[senders]], [users], [rewrite], [[listen]] modes
    postscreen   the kinds and checks of [postscreen]
    values       Secret, mask(), durations
    load         read and validate a file (one ConfigError naming file, key and value); show it
    public       what the master learns from short-lived processes that may read secrets
    generations  config apply / rollback / generations (C1, C2); secrets  password files
"""
