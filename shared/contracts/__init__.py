"""The contracts: what goes in (the request), what rlq keeps (the run), what comes out (the completion
message), what the trainer is given and prints back, and the allow-lists and tables they are checked
against. Below everything else in ``shared/``: they import nothing of rlq but :mod:`shared.errors`."""
